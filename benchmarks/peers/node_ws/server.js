'use strict';
// Benchmark peer of trio_rt: a broadcast server on Node's `ws` (the version pinned in
// package.json / package-lock.json), speaking the subset of the demo's protocol that the
// harnesses use (benchmarks/README.md, "Peers"):
//
// * on connect: {"type": "welcome", "connection_id": "<n>"};
// * {"type": "join_room", "room": R} -> joins R, replies {"type": "room_joined", "room": R};
// * {"type": "bench_start", "count": M, "size": S[, "rate": R]} -> M broadcasts to the room
//   "bench" of {"type": "bench", "seq": i, "t": <CLOCK_MONOTONIC ns>, "pad": "x" * S}: each
//   message is encoded once (one Buffer) and `ws.send` to every member; between two
//   broadcasts the loop yields to the event loop (setImmediate), as the Python peers do. With
//   R > 0 broadcast i is sent at start + i / R (absolute schedule);
// * --heartbeat S: ws's documented keepalive: every S seconds, terminate the connections that
//   did not answer the previous ping, ping the others (one interval for all connections);
// * --compression: permessage-deflate (ws's defaults), negotiated with clients that offer it;
// * SIGUSR1: gc() (node runs with --expose-gc) and a line
//   "STATE <open> <heartbeat timeouts> <opened> <closed>" (benchmarks.connections);
// * prints "READY <port>" once listening (--port 0: any free port).
//
// Started by `python -m benchmarks.servers.node_ws`, which installs ws into a cache directory
// first (benchmarks/peers/__init__.py); never run `npm install` in the repository.

const { WebSocketServer } = require('ws');
const { setImmediate: immediate, setTimeout: sleep } = require('node:timers/promises');

function parseArgs(argv) {
  const args = { host: '127.0.0.1', port: 0, heartbeat: 0, compression: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--host') args.host = argv[++i];
    else if (a === '--port') args.port = Number(argv[++i]);
    else if (a === '--heartbeat') args.heartbeat = Number(argv[++i]);
    else if (a === '--compression') args.compression = true;
    else throw new Error(`unknown argument ${a}`);
  }
  return args;
}

const args = parseArgs(process.argv.slice(2));
const ROOM = 'bench';
const rooms = new Map(); // room name -> Set of sockets
const counts = { open: 0, opened: 0, closed: 0, timeouts: 0 };
let nextId = 1;

const wss = new WebSocketServer({
  host: args.host,
  port: args.port,
  backlog: 1024,
  perMessageDeflate: args.compression,
  maxPayload: 1 << 20,
});

async function runBench(count, size, rate) {
  const pad = 'x'.repeat(size);
  const members = rooms.get(ROOM) || new Set();
  const start = performance.now(); // ms
  for (let i = 0; i < count; i++) {
    if (rate > 0) {
      const delay = start + (i * 1000) / rate - performance.now();
      if (delay > 0) await sleep(delay);
      else await immediate();
    }
    const data = Buffer.from(
      `{"type":"bench","seq":${i},"t":${process.hrtime.bigint()},"pad":"${pad}"}`,
    );
    for (const ws of members) ws.send(data, { binary: false });
    if (rate <= 0) await immediate();
  }
}

wss.on('connection', (ws) => {
  counts.open++;
  counts.opened++;
  const joined = new Set();
  ws.isAlive = true;
  ws.on('pong', () => {
    ws.isAlive = true;
  });
  ws.on('message', (raw, isBinary) => {
    if (isBinary) return;
    let message;
    try {
      message = JSON.parse(raw);
    } catch {
      return;
    }
    if (message.type === 'join_room') {
      const room = String(message.room);
      if (!rooms.has(room)) rooms.set(room, new Set());
      rooms.get(room).add(ws);
      joined.add(room);
      ws.send(JSON.stringify({ type: 'room_joined', room }));
    } else if (message.type === 'bench_start') {
      runBench(Number(message.count), Number(message.size || 0), Number(message.rate || 0));
    }
  });
  ws.on('close', () => {
    counts.open--;
    counts.closed++;
    for (const room of joined) rooms.get(room).delete(ws);
  });
  ws.on('error', () => {}); // a reset connection: 'close' follows
  ws.send(JSON.stringify({ type: 'welcome', connection_id: String(nextId++) }));
});

if (args.heartbeat > 0) {
  setInterval(() => {
    for (const ws of wss.clients) {
      if (!ws.isAlive) {
        counts.timeouts++;
        ws.terminate();
        continue;
      }
      ws.isAlive = false;
      ws.ping();
    }
  }, args.heartbeat * 1000);
}

process.on('SIGUSR1', () => {
  if (global.gc) global.gc();
  console.log(`STATE ${counts.open} ${counts.timeouts} ${counts.opened} ${counts.closed}`);
});

wss.on('listening', () => {
  console.log(`READY ${wss.address().port}`);
});

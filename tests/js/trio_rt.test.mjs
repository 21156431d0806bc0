// Unit tests of the browser client's logic: `node --test tests/js/` (run by
// tests/integration/test_browser_client.py). No sockets: a FakeWebSocket and manual timers drive the client.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  Backoff,
  ClientClosed,
  Outbox,
  PositionTracker,
  QueueFull,
  ServerError,
  TrioRtClient,
  classifyClose,
} from "../../trio_rt/static/trio_rt.js";

// -- pure logic -------------------------------------------------------------------------------

test("backoff: exponential, capped, full jitter within (0, base]", () => {
  const b = new Backoff({ initialDelay: 0.5, maxDelay: 20, multiplier: 2, jitter: 1 });
  assert.deepEqual([0, 1, 2, 3, 10, 5000].map((n) => b.baseDelay(n)), [0.5, 1, 2, 4, 20, 20]);
  assert.equal(b.delay(3, () => 0), 4); // U=0: the base
  assert.equal(b.delay(3, () => 0.75), 1); // 4 * (1 - 0.75)
  for (let i = 0; i < 200; i++) {
    const d = b.delay(6, Math.random);
    assert.ok(d > 0 && d <= 20, d);
  }
  const fixed = new Backoff({ jitter: 0 });
  assert.equal(fixed.delay(2, () => 0.99), 2);
});

test("backoff: invalid settings are refused", () => {
  assert.throws(() => new Backoff({ initialDelay: 0 }), RangeError);
  assert.throws(() => new Backoff({ jitter: 1.5 }), RangeError);
  assert.throws(() => new Backoff({ initialDelay: 5, maxDelay: 1 }), RangeError);
  assert.throws(() => new Backoff({ multiplier: 0.5 }), RangeError);
});

test("outbox: ordered, bounded, 'raise' keeps what it has", () => {
  const q = new Outbox(2, "raise");
  q.push("a");
  q.push("b");
  assert.throws(() => q.push("c"), QueueFull);
  assert.deepEqual(q.drain(), ["a", "b"]);
  assert.equal(q.length, 0);
});

test("outbox: 'drop_oldest' discards the oldest and says which", () => {
  const q = new Outbox(2, "drop_oldest");
  q.push("a");
  q.push("b");
  assert.equal(q.push("c"), "a");
  assert.equal(q.dropped, 1);
  assert.deepEqual(q.drain(), ["b", "c"]);
  assert.throws(() => new Outbox(2, "wait"), RangeError);
  assert.throws(() => new Outbox(0), RangeError);
});

test("positions: advance within an epoch, duplicates refused, a new epoch accepted", () => {
  const t = new PositionTracker();
  assert.equal(t.get("room:r"), undefined);
  assert.ok(t.advance("room:r", { offset: 3, epoch: "e1" }));
  assert.ok(!t.advance("room:r", { offset: 3, epoch: "e1" }));
  assert.ok(t.advance("room:r", { offset: 5, epoch: "e1" }));
  assert.ok(t.advance("room:r", { offset: 4, epoch: "e1" })); // late, not received: delivered
  assert.ok(!t.advance("room:r", { offset: 4, epoch: "e1" })); // now received
  assert.deepEqual(t.get("room:r"), { offset: 5, epoch: "e1" }); // the greatest
  t.reset("room:r", { offset: 7, epoch: "e1" }); // a join's position marks nothing received
  assert.deepEqual(t.get("room:r"), { offset: 7, epoch: "e1" });
  assert.ok(t.advance("room:r", { offset: 2, epoch: "e1" })); // below the join, never received
  assert.ok(t.advance("room:r", { offset: 6, epoch: "e1" }));
  assert.ok(!t.advance("room:r", { offset: 5, epoch: "e1" })); // received before the reset
  assert.ok(t.advance("room:r", { offset: 1, epoch: "e2" }));
  assert.deepEqual(t.get("room:r"), { offset: 1, epoch: "e2" });
  assert.ok(t.advance("room:r", undefined)); // no position: nothing to compare
  t.reset("room:r", { offset: 0, epoch: "e3" });
  assert.deepEqual(t.get("room:r"), { offset: 0, epoch: "e3" });
  t.observe("room:r", { offset: 4, epoch: "e3" }); // a history page: forward, nothing received
  assert.deepEqual(t.get("room:r"), { offset: 4, epoch: "e3" });
  assert.ok(t.advance("room:r", { offset: 4, epoch: "e3" }));
  t.observe("room:r", { offset: 2, epoch: "e3" }); // never backwards
  assert.deepEqual(t.get("room:r"), { offset: 4, epoch: "e3" });
  t.forget("room:r");
  assert.equal(t.get("room:r"), undefined);
});

test("positions: a bounded window of received offsets; a floor only once it overflowed", () => {
  const t = new PositionTracker(4);
  for (const o of [10, 12, 11, 13]) assert.ok(t.advance("s", { offset: o, epoch: "e" }));
  assert.equal(t.positions.get("s").floor, -Infinity);
  assert.ok(t.advance("s", { offset: 9, epoch: "e" })); // late: delivered, then forgotten
  assert.equal(t.positions.get("s").floor, 9);
  assert.ok(!t.advance("s", { offset: 9, epoch: "e" }));
  assert.ok(!t.advance("s", { offset: 8, epoch: "e" })); // below the window: counted received
  assert.ok(t.advance("s", { offset: 14, epoch: "e" })); // 10 leaves the window
  assert.equal(t.positions.get("s").seen.size, 4);
  assert.ok(!t.advance("s", { offset: 10, epoch: "e" }));
  assert.ok(!t.advance("s", { offset: 11, epoch: "e" })); // still remembered
  t.reset("s", { offset: 12, epoch: "e" }); // the server's position, lower than the last
  assert.deepEqual(t.get("s"), { offset: 12, epoch: "e" });
  assert.ok(!t.advance("s", { offset: 14, epoch: "e" })); // received before the reset
  assert.ok(t.advance("s", { offset: 15, epoch: "e" }));
  t.reset("s", { offset: 1, epoch: "e2" }); // a new epoch: nothing received in it yet
  assert.ok(t.advance("s", { offset: 1, epoch: "e2" }));
  assert.ok(!t.advance("s", { offset: 1, epoch: "e2" }));
});

test("close codes: 4003 and policy violations stop, 4004 needs a new token", () => {
  assert.equal(classifyClose(4003, { hasTokenProvider: true }), "stop");
  assert.equal(classifyClose(1008), "stop");
  assert.equal(classifyClose(4004, { hasTokenProvider: true }), "new_token");
  assert.equal(classifyClose(4004, { hasTokenProvider: false }), "stop");
  for (const code of [1000, 1001, 1006, 1011, 4000, 4001, 4029]) {
    assert.equal(classifyClose(code), "retry", code);
  }
});

// -- the client against a fake socket ---------------------------------------------------------

class FakeTimers {
  constructor() {
    this.queue = [];
    this.nextId = 1;
  }
  setTimeout(fn, ms) {
    const id = this.nextId++;
    this.queue.push({ id, fn, ms });
    return id;
  }
  clearTimeout(id) {
    this.queue = this.queue.filter((t) => t.id !== id);
  }
  /** Run the earliest timer whose delay is `ms` or more (the reconnect delay). */
  runLongest() {
    this.queue.sort((a, b) => b.ms - a.ms);
    const t = this.queue.shift();
    t.fn();
    return t.ms;
  }
}

function fakeSocketClass() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.sent = [];
      this.closed = null;
      sockets.push(this);
    }
    send(frame) {
      this.sent.push(JSON.parse(frame));
    }
    close(code, reason) {
      this.closed = { code, reason };
    }
    // test side
    deliver(msg) {
      this.onmessage({ data: JSON.stringify(msg) });
    }
    drop(code = 1006, reason = "") {
      this.onclose({ code, reason });
    }
  }
  return { FakeWebSocket, sockets };
}

const tick = () => new Promise((r) => setImmediate(r));

function makeClient(options = {}) {
  const { FakeWebSocket, sockets } = fakeSocketClass();
  const timers = new FakeTimers();
  const client = new TrioRtClient("ws://server/", {
    WebSocket: FakeWebSocket,
    timers,
    random: () => 0,
    requestTimeout: null,
    openTimeout: null,
    ...options,
  });
  const events = [];
  for (const type of ["state", "open", "reconnecting", "recovery_failed", "history", "closed"]) {
    client.on(type, (e) => events.push([type, e]));
  }
  return { client, sockets, timers, events };
}

test("token provider: called on every connect, sent next to trio_rt.v1", async () => {
  let n = 0;
  const { client, sockets, timers } = makeClient({ token: async () => `tok${++n}` });
  client.connect();
  await tick();
  assert.deepEqual(sockets[0].protocols, ["trio_rt.v1", "bearer.tok1"]);
  sockets[0].deliver({ type: "welcome", connection_id: "c1" });
  await tick();
  assert.equal(client.state, "open");
  sockets[0].drop(4004, "token expired");
  assert.equal(client.state, "reconnecting");
  timers.runLongest();
  await tick();
  assert.deepEqual(sockets[1].protocols, ["trio_rt.v1", "bearer.tok2"]);
});

test("4003 stops the client: no reconnect, pending requests rejected", async () => {
  const { client, sockets, timers } = makeClient({ token: () => "t" });
  client.connect();
  await tick();
  sockets[0].deliver({ type: "welcome" });
  await tick();
  const pending = client.request({ type: "ping" });
  sockets[0].drop(4003, "forbidden");
  await assert.rejects(pending, ClientClosed);
  assert.equal(client.state, "closed");
  assert.equal(client.closeCode, 4003);
  assert.equal(timers.queue.length, 0);
  assert.throws(() => client.send({ type: "x" }), ClientClosed);
});

test("offline queue: written in order after the rooms are rejoined", async () => {
  const { client, sockets, timers } = makeClient();
  client.connect();
  await tick();
  const ws = sockets[0];
  ws.deliver({ type: "welcome" });
  await tick();
  const joined = client.joinRoom("r");
  const join = ws.sent.at(-1);
  assert.equal(join.type, "join_room");
  assert.equal(join.since, undefined);
  ws.deliver({ type: "room_joined", room: "r", id: join.id, position: { offset: 5, epoch: "e" } });
  await joined;
  ws.deliver({ type: "chat", room: "r", position: { offset: 6, epoch: "e" } });
  ws.drop(1001);
  client.send({ type: "a" });
  client.send({ type: "b" });
  assert.equal(client.outbox.length, 2);
  timers.runLongest();
  await tick();
  const ws2 = sockets[1];
  ws2.deliver({ type: "welcome" });
  await tick();
  const rejoin = ws2.sent[0];
  assert.deepEqual(rejoin.since, { offset: 6, epoch: "e" }); // recovery from the last position
  assert.equal(ws2.sent.length, 1); // the queue waits for the rejoin
  ws2.deliver({ type: "chat", room: "r", position: { offset: 7, epoch: "e" } }); // missed one
  ws2.deliver({
    type: "room_joined",
    room: "r",
    id: rejoin.id,
    recovered: true,
    position: { offset: 7, epoch: "e" },
  });
  await tick();
  assert.equal(client.state, "open");
  assert.deepEqual(
    ws2.sent.slice(1).map((m) => m.type),
    ["a", "b"],
  );
  assert.deepEqual(client.positions.get("room:r"), { offset: 7, epoch: "e" });
});

test("duplicates by position are dropped, new epochs are not", async () => {
  const { client, sockets } = makeClient();
  const got = [];
  client.on("message", (m) => got.push(m.n));
  client.connect();
  await tick();
  const ws = sockets[0];
  ws.deliver({ type: "welcome" });
  await tick();
  const joined = client.joinRoom("r");
  ws.deliver({ type: "room_joined", room: "r", id: ws.sent[0].id, position: { offset: 1, epoch: "e" } });
  await joined;
  for (const [n, offset, epoch] of [[1, 2, "e"], [2, 2, "e"], [3, 3, "e"], [4, 1, "f"]]) {
    ws.deliver({ type: "m", n, room: "r", position: { offset, epoch } });
  }
  assert.deepEqual(got, [1, 3, 4]);
  assert.equal(client.stats.duplicates, 1);
});

test("recovered:false emits recovery_failed and refetches history", async () => {
  const { client, sockets, timers, events } = makeClient();
  client.connect();
  await tick();
  sockets[0].deliver({ type: "welcome" });
  await tick();
  const joined = client.joinRoom("r");
  sockets[0].deliver({
    type: "room_joined",
    room: "r",
    id: sockets[0].sent[0].id,
    position: { offset: 9, epoch: "old" },
  });
  await joined;
  sockets[0].drop(1006);
  timers.runLongest();
  await tick();
  const ws = sockets[1];
  ws.deliver({ type: "welcome" });
  await tick();
  assert.deepEqual(ws.sent[0].since, { offset: 9, epoch: "old" });
  ws.deliver({
    type: "room_joined",
    room: "r",
    id: ws.sent[0].id,
    recovered: false,
    reason: "epoch_changed",
    position: { offset: 2, epoch: "new" },
  });
  await tick();
  const hist = ws.sent.find((m) => m.type === "history");
  assert.equal(hist.room, "r");
  ws.deliver({
    type: "history",
    id: hist.id,
    room: "r",
    messages: [{ type: "m", room: "r", position: { offset: 2, epoch: "new" } }],
    position: { offset: 2, epoch: "new" },
  });
  await tick();
  const failed = events.find(([t]) => t === "recovery_failed")[1];
  assert.equal(failed.reason, "epoch_changed");
  const history = events.find(([t]) => t === "history")[1];
  assert.equal(history.messages.length, 1);
  assert.equal(history.reason, "epoch_changed");
});

test("a refused rejoin forgets the room; a refused join rejects with ServerError", async () => {
  const { client, sockets } = makeClient();
  client.connect();
  await tick();
  const ws = sockets[0];
  ws.deliver({ type: "welcome" });
  await tick();
  const joined = client.joinRoom("full");
  ws.deliver({ type: "error", code: "room_full", message: "full", id: ws.sent[0].id });
  await assert.rejects(joined, (e) => e instanceof ServerError && e.code === "room_full");
  assert.deepEqual(client.rooms, []);
});

test("backoff grows per failed attempt and maxAttempts gives up", async () => {
  const { client, sockets, timers, events } = makeClient({ maxAttempts: 3 });
  client.connect();
  await tick();
  sockets[0].drop(1006);
  const delays = [timers.runLongest()];
  await tick();
  sockets[1].drop(1006);
  delays.push(timers.runLongest());
  await tick();
  sockets[2].drop(1006);
  assert.deepEqual(delays, [500, 1000]); // random() = 0: the base delays
  assert.equal(client.state, "closed");
  assert.ok(events.some(([t]) => t === "closed"));
  assert.equal(sockets.length, 3);
});

test("table subscriptions are renewed with since and a new sid", async () => {
  const { client, sockets, timers } = makeClient();
  client.connect();
  await tick();
  const ws = sockets[0];
  ws.deliver({ type: "welcome" });
  await tick();
  const subscribed = client.subscribe("posts", { author: "ann" });
  const req = ws.sent[0];
  assert.deepEqual(req.filters, { author: "ann" });
  ws.deliver({
    type: "subscribed",
    id: req.id,
    subscription: "s1",
    table: "posts",
    position: { offset: 1, epoch: "e" },
  });
  const sub = await subscribed;
  const seen = [];
  sub.on((event) => seen.push(event.data.title));
  const update = (sid, offset, title) => ({
    type: "data_update",
    table: "posts",
    subscription: sid,
    event: { operation: "insert", key: {}, data: { title }, position: { offset, epoch: "e" } },
  });
  ws.deliver(update("s1", 2, "one"));
  ws.drop(1006);
  timers.runLongest();
  await tick();
  const ws2 = sockets[1];
  ws2.deliver({ type: "welcome" });
  await tick();
  assert.deepEqual(ws2.sent[0].since, { offset: 2, epoch: "e" });
  ws2.deliver(update("s2", 2, "dup")); // replayed overlap: dropped by position
  ws2.deliver(update("s2", 3, "two"));
  ws2.deliver({
    type: "subscribed",
    id: ws2.sent[0].id,
    subscription: "s2",
    table: "posts",
    recovered: true,
    position: { offset: 3, epoch: "e" },
  });
  await tick();
  ws2.deliver(update("s2", 4, "three"));
  assert.equal(sub.sid, "s2");
  // Replayed before `subscribed` named the new sid: held, then delivered; the overlap dropped.
  assert.deepEqual(seen, ["one", "two", "three"]);
  assert.equal(client.stats.duplicates, 1);
});

test("refresh sends a fresh token from the provider in-band", async () => {
  let n = 0;
  const { client, sockets } = makeClient({ token: () => `tok${++n}` });
  client.connect();
  await tick();
  const ws = sockets[0];
  ws.deliver({ type: "welcome" });
  await tick();
  const refreshed = client.refresh();
  await tick();
  const req = ws.sent.at(-1);
  assert.deepEqual([req.type, req.token], ["refresh", "tok2"]);
  ws.deliver({ type: "refreshed", id: req.id, expires_at: 123 });
  assert.equal((await refreshed).expires_at, 123);
});

test("openTimeout covers a token provider that never answers", async () => {
  let calls = 0;
  const { client, sockets, timers, events } = makeClient({
    openTimeout: 10,
    token: () => {
      calls += 1;
      return calls === 1 ? new Promise(() => {}) : "t";
    },
  });
  client.connect();
  await tick();
  assert.equal(sockets.length, 0);
  assert.equal(timers.runLongest(), 10000); // the open timeout fires
  assert.ok(events.some(([t, e]) => t === "reconnecting" && e.reason === "open timeout"));
  timers.runLongest(); // the retry delay
  await tick();
  assert.equal(calls, 2);
  assert.deepEqual(sockets[0].protocols, ["trio_rt.v1", "bearer.t"]);
});

test("offsets at or below a join's position that were never received are delivered", async () => {
  const { client, sockets, timers } = makeClient();
  const got = [];
  client.on("message", (m) => got.push(m.n));
  client.connect();
  await tick();
  const ws = sockets[0];
  ws.deliver({ type: "welcome" });
  await tick();
  const joined = client.joinRoom("r");
  ws.deliver({ type: "room_joined", room: "r", id: ws.sent[0].id, position: { offset: 5, epoch: "e" } });
  await joined;
  const m = (n) => ({ type: "m", n, room: "r", position: { offset: n, epoch: "e" } });
  ws.deliver(m(4)); // written before the join, delivered late
  ws.deliver(m(6));
  ws.drop(1006);
  timers.runLongest();
  await tick();
  const ws2 = sockets[1];
  ws2.deliver({ type: "welcome" });
  await tick();
  assert.deepEqual(ws2.sent[0].since, { offset: 6, epoch: "e" });
  // 7 and 8 are still being written: nothing to replay, recovered at position 8.
  ws2.deliver({
    type: "room_joined",
    room: "r",
    id: ws2.sent[0].id,
    recovered: true,
    position: { offset: 8, epoch: "e" },
  });
  await tick();
  ws2.deliver(m(7));
  ws2.deliver(m(8));
  ws2.deliver(m(8)); // received once: a duplicate now
  assert.deepEqual(got, [4, 6, 7, 8]);
  assert.equal(client.stats.duplicates, 1);
  assert.deepEqual(client.positions.get("room:r"), { offset: 8, epoch: "e" });
});

test("room_gap: reported as a failed recovery, history refetched, delivered untouched", async () => {
  const { client, sockets, events } = makeClient();
  const got = [];
  client.on("message", (m) => got.push(m));
  client.connect();
  await tick();
  const ws = sockets[0];
  ws.deliver({ type: "welcome" });
  await tick();
  const joined = client.joinRoom("r");
  ws.deliver({ type: "room_joined", room: "r", id: ws.sent[0].id, position: { offset: 4, epoch: "e" } });
  await joined;
  const gap = {
    type: "room_gap",
    room: "r",
    after: { offset: 4, epoch: "e" },
    before: { offset: 7, epoch: "e" },
    reason: "too_many",
  };
  const novel = { type: "brand_new", room: "r", x: 1 };
  ws.deliver(gap);
  ws.deliver(novel);
  assert.deepEqual(got, [gap, novel]);
  const failed = events.filter(([t]) => t === "recovery_failed").map(([, e]) => [e.room, e.reason]);
  assert.deepEqual(failed, [["r", "too_many"]]);
  assert.equal(ws.sent.at(-1).type, "history");
});

test("changes of another subscription id: held while a subscribe of their table is in flight, then delivered untouched", async () => {
  const { client, sockets } = makeClient();
  const got = [];
  client.on("message", (m) => got.push(m));
  client.connect();
  await tick();
  const ws = sockets[0];
  ws.deliver({ type: "welcome" });
  await tick();
  const subscribed = client.subscribe("posts");
  const req = ws.sent[0];
  const change = (sid, table, offset) => ({
    type: "data_update",
    table,
    subscription: sid,
    event: { operation: "insert", key: {}, data: {}, position: { offset, epoch: "e" } },
  });
  ws.deliver(change("other", "tags", 1)); // no subscribe of "tags" in flight: at once
  ws.deliver(change("raw", "posts", 1)); // held: may be this subscribe's replay
  assert.deepEqual(got.map((m) => m.subscription), ["other"]);
  ws.deliver({ type: "subscribed", id: req.id, subscription: "s1", table: "posts", position: { offset: 1, epoch: "e" } });
  await subscribed;
  assert.deepEqual(got.map((m) => m.subscription), ["other", "raw"]);
});

test("a subscription dropped before its reply is unsubscribed on the server, its changes dropped", async () => {
  const { client, sockets } = makeClient();
  const got = [];
  client.on("message", (m) => got.push(m));
  client.connect();
  await tick();
  const ws = sockets[0];
  ws.deliver({ type: "welcome" });
  await tick();
  client.subscribe("posts").catch(() => {});
  const req = ws.sent[0];
  const sub = [...client._subs.values()][0];
  sub.unsubscribe();
  ws.deliver({ type: "subscribed", id: req.id, subscription: "s1", table: "posts", position: { offset: 0, epoch: "e" } });
  await tick();
  assert.deepEqual(
    [ws.sent.at(-1).type, ws.sent.at(-1).subscription],
    ["unsubscribe", "s1"],
  );
  ws.deliver({
    type: "data_update",
    table: "posts",
    subscription: "s1",
    event: { operation: "insert", key: {}, data: {}, position: { offset: 1, epoch: "e" } },
  });
  assert.deepEqual(got, []);
});

test("a room message with an application field `id` is a message, not a reply", async () => {
  const { client, sockets } = makeClient();
  const got = [];
  client.on("message", (m) => got.push(m.n));
  client.connect();
  await tick();
  const ws = sockets[0];
  ws.deliver({ type: "welcome" });
  await tick();
  const joined = client.joinRoom("r");
  ws.deliver({ type: "room_joined", room: "r", id: ws.sent[0].id, position: { offset: 1, epoch: "e" } });
  await joined;
  // A request in flight, and room messages whose own `id` field happens to be its id.
  let answered = null;
  const pending = client.request({ type: "say", text: "hi" }).then((r) => (answered = r));
  const rid = ws.sent.at(-1).id;
  const chat = { type: "chat", n: 1, id: rid, room: "r", position: { offset: 2, epoch: "e" } };
  ws.deliver(chat);
  ws.deliver({ ...chat }); // the same offset again: a duplicate, dropped
  ws.deliver({ type: "chat", n: 2, id: 77, room: "r", position: { offset: 3, epoch: "e" } });
  await tick();
  assert.deepEqual(got, [1, 2]);
  assert.equal(client.stats.duplicates, 1);
  assert.equal(answered, null); // the room message did not answer the request
  ws.deliver({ type: "said", id: rid });
  await pending;
  assert.equal(answered.type, "said");
  // A built-in request is answered only by its reply type (or an error).
  const ping = client.request({ type: "ping" });
  const pid = ws.sent.at(-1).id;
  ws.deliver({ type: "chat", n: 3, id: pid, room: "elsewhere" });
  ws.deliver({ type: "pong", id: pid });
  assert.equal((await ping).type, "pong");
  await tick();
  assert.deepEqual(got, [1, 2, 3]);
  assert.deepEqual(client.positions.get("room:r"), { offset: 3, epoch: "e" });
});

test("an unclaimed room_joined or history page marks nothing as received", async () => {
  const { client, sockets } = makeClient();
  const got = [];
  client.on("message", (m) => got.push(m.type === "m" ? m.n : m.type));
  client.connect();
  await tick();
  const ws = sockets[0];
  ws.deliver({ type: "welcome" });
  await tick();
  const joined = client.joinRoom("r");
  ws.deliver({ type: "room_joined", room: "r", id: ws.sent[0].id, position: { offset: 1, epoch: "e" } });
  await joined;
  const page = { type: "history", room: "r", messages: [], position: { offset: 5, epoch: "e" } };
  ws.deliver(page); // the reply to a history request the app sent raw
  ws.deliver({ type: "room_joined", room: "r", id: 999, position: { offset: 6, epoch: "e" } });
  ws.deliver({ type: "m", n: 5, room: "r", position: { offset: 5, epoch: "e" } }); // late, delivered
  ws.deliver({ type: "m", n: 6, room: "r", position: { offset: 6, epoch: "e" } });
  await tick();
  assert.deepEqual(got, ["history", "room_joined", 5, 6]);
  assert.equal(client.stats.duplicates, 0);
});

test("publish: acked once; unanswered publishes are written again with the same id after a reconnect", async () => {
  const { client, sockets, timers } = makeClient();
  client.connect();
  await tick();
  const ws = sockets[0];
  ws.deliver({ type: "welcome" });
  await tick();
  const joined = client.joinRoom("r");
  ws.deliver({ type: "room_joined", room: "r", id: ws.sent.at(-1).id });
  await joined;
  const first = client.publish("r", { text: "hi" }, { id: "m1" });
  assert.deepEqual(ws.sent.at(-1), { type: "publish", room: "r", data: { text: "hi" }, id: "m1" });
  ws.drop(1006); // the ack is lost with the connection
  const offline = client.publish("r", "typed offline", { id: "m2" });
  client.send({ type: "plain" });
  assert.equal(client.unacknowledged, 2);
  timers.runLongest();
  await tick();
  const ws2 = sockets[1];
  ws2.deliver({ type: "welcome" });
  await tick();
  assert.deepEqual(ws2.sent.map((m) => m.type), ["join_room"]); // rejoin first
  ws2.deliver({ type: "room_joined", room: "r", id: ws2.sent[0].id });
  await tick();
  // Then the publishes, in order, the first with its id again; then the queue.
  assert.deepEqual(
    ws2.sent.slice(1).map((m) => [m.type, m.id]),
    [["publish", "m1"], ["publish", "m2"], ["plain", undefined]],
  );
  assert.equal(client.stats.resent, 1);
  const ack = { type: "ack", room: "r", position: { offset: 3, epoch: "e" }, id: "m1" };
  ws2.deliver(ack);
  assert.deepEqual(await first, ack);
  ws2.deliver({ type: "error", code: "not_permitted", message: "no", id: "m2" });
  await assert.rejects(offline, ServerError);
  assert.equal(client.unacknowledged, 0);
  ws2.drop(1006);
  timers.runLongest();
  await tick();
  sockets[2].deliver({ type: "welcome" });
  await tick();
  sockets[2].deliver({ type: "room_joined", room: "r", id: sockets[2].sent[0].id });
  await tick();
  assert.deepEqual(sockets[2].sent.map((m) => m.type), ["join_room"]); // nothing resent
});

test("publish: a duplicate id waiting is refused, closing rejects what waits", async () => {
  const { client, sockets } = makeClient();
  client.connect();
  await tick();
  sockets[0].deliver({ type: "welcome" });
  await tick();
  const waiting = client.publish("r", 1, { id: "a" });
  await assert.rejects(client.publish("r", 2, { id: "a" }), /already waiting/);
  const generated = client.publish("r", 3);
  assert.match(String(sockets[0].sent.at(-1).id), /^[0-9a-f-]{32,36}$/);
  client.close();
  await assert.rejects(waiting, ClientClosed);
  await assert.rejects(generated, ClientClosed);
  await assert.rejects(client.publish("r", 4), ClientClosed);
});

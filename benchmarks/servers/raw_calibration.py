"""Calibration server: checks that the load generator is not the bottleneck.

Not a contender. Same protocol as the other servers (welcome, ``join_room``, ``bench_start``),
handshake by websockets' asyncio server, but each broadcast is framed ONCE and written to every
connection's socket with a bare non-blocking ``os.write`` (falling back to the transport's
buffer when the socket is full or bytes are already buffered), without awaiting. It delivers
faster than either contender; if the generator still keeps up (about one delivery per read, a
small ``drain_ms``), it has headroom at the contenders' rates.

Run: ``python -m benchmarks.servers.raw_calibration [--host H] [--port P]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
from collections import defaultdict

from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Frame, Opcode

ROOM = "bench"

_ids = itertools.count(1)
rooms: defaultdict[str, set[ServerConnection]] = defaultdict(set)


def write_now(ws: ServerConnection, data: bytes) -> None:
    transport = ws.transport
    if transport.get_write_buffer_size() == 0:
        try:
            sent = os.write(transport.get_extra_info("socket").fileno(), data)
        except BlockingIOError:
            sent = 0
        data = data[sent:]
    if data:
        transport.write(data)


async def run_bench(count: int, size: int) -> None:
    pad = "x" * size
    members = rooms[ROOM]
    for i in range(count):
        text = json.dumps({"type": "bench", "seq": i, "t": time.monotonic_ns(), "pad": pad})
        frame = Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])
        for ws in members:
            write_now(ws, frame)
        await asyncio.sleep(0)


async def handler(ws: ServerConnection) -> None:
    joined: set[str] = set()
    await ws.send(json.dumps({"type": "welcome", "connection_id": str(next(_ids))}))
    try:
        async for raw in ws:
            message = json.loads(raw)
            kind = message.get("type")
            if kind == "join_room":
                room = str(message["room"])
                rooms[room].add(ws)
                joined.add(room)
                await ws.send(json.dumps({"type": "room_joined", "room": room}))
            elif kind == "bench_start":
                await run_bench(int(message["count"]), int(message.get("size", 0)))
    finally:
        for room in joined:
            rooms[room].discard(ws)


async def main(host: str, port: int) -> None:
    async with serve(
        handler, host, port, compression=None, ping_interval=None, backlog=1024
    ) as server:
        bound_port = next(iter(server.sockets)).getsockname()[1]
        print(f"READY {bound_port}", flush=True)
        await server.serve_forever()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        asyncio.run(main(args.host, args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    cli()

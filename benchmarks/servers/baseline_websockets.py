"""Baseline fan-out server: websockets' asyncio implementation and its ``broadcast()``.

Behaviour (identical to ``trio_rt_server``):

* on connect, sends ``{"type": "welcome", ...}`` (trio_rt does too; outside the timed window);
* ``{"type": "join_room", "room": R}`` -> the connection joins R, reply
  ``{"type": "room_joined", "room": R}``;
* ``{"type": "bench_start", "count": M, "size": S}`` -> M times: build
  ``{"type": "bench", "seq": i, "t": <monotonic ns>, "pad": "x" * S}`` as JSON and
  ``broadcast()`` it to the room "bench", yielding to the event loop between broadcasts.

Run: ``python -m benchmarks.servers.baseline_websockets [--host H] [--port P]``
(port 0 = any free port); prints ``READY <port>`` on stdout once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections import defaultdict

from websockets.asyncio.server import ServerConnection, broadcast, serve

ROOM = "bench"

_ids = itertools.count(1)
rooms: defaultdict[str, set[ServerConnection]] = defaultdict(set)


async def run_bench(count: int, size: int) -> None:
    pad = "x" * size
    members = rooms[ROOM]
    for i in range(count):
        text = json.dumps({"type": "bench", "seq": i, "t": time.monotonic_ns(), "pad": pad})
        broadcast(members, text)
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
        handler,
        host,
        port,
        compression=None,
        ping_interval=None,
        max_size=2**20,
        backlog=1024,
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

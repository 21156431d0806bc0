"""Baseline bench server (websockets asyncio ``broadcast()``) with pacing and optional deflate.

``benchmarks.servers.baseline_websockets`` plus:

* ``bench_start`` may carry ``"rate": R`` (broadcasts per second): broadcast i is sent at
  ``start + i / R`` (absolute schedule on the loop's clock); absent or 0 = as fast as
  possible, yielding with ``sleep(0)`` between broadcasts exactly like ``baseline_websockets``;
* ``--compression``: ``serve(compression="deflate")`` (websockets' defaults); ``broadcast()``
  then compresses the message once per connection, with that connection's compressor.

Run: ``python -m benchmarks.servers.latency_baseline [--host H] [--port P] [--compression]``;
prints ``READY <port>`` once listening.
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


async def run_bench(count: int, size: int, rate: float) -> None:
    pad = "x" * size
    members = rooms[ROOM]
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(count):
        if rate > 0:
            delay = start + i / rate - loop.time()
            await asyncio.sleep(max(0.0, delay))
        text = json.dumps({"type": "bench", "seq": i, "t": time.monotonic_ns(), "pad": pad})
        broadcast(members, text)
        if rate <= 0:
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
                await run_bench(
                    int(message["count"]),
                    int(message.get("size", 0)),
                    float(message.get("rate", 0) or 0),
                )
    finally:
        for room in joined:
            rooms[room].discard(ws)


async def main(host: str, port: int, compression: bool) -> None:
    async with serve(
        handler,
        host,
        port,
        compression="deflate" if compression else None,
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
    parser.add_argument("--compression", action="store_true")
    args = parser.parse_args()
    try:
        asyncio.run(main(args.host, args.port, args.compression))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    cli()

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

import asyncio
import json
import time

from websockets.asyncio.server import broadcast

from ._asyncio_room import ROOM, rooms, run_cli


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


def cli() -> None:
    run_cli(__doc__.splitlines()[0], run_bench, compression_flag=True, max_size=2**20)


if __name__ == "__main__":
    cli()

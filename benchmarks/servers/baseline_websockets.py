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

import asyncio
import json
import time

from websockets.asyncio.server import broadcast

from ._asyncio_room import ROOM, rooms, run_cli


async def run_bench(count: int, size: int, rate: float = 0) -> None:
    pad = "x" * size
    members = rooms[ROOM]
    for i in range(count):
        text = json.dumps({"type": "bench", "seq": i, "t": time.monotonic_ns(), "pad": pad})
        broadcast(members, text)
        await asyncio.sleep(0)


def cli() -> None:
    run_cli(__doc__.splitlines()[0], run_bench, max_size=2**20)


if __name__ == "__main__":
    cli()

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

import asyncio
import json
import os
import time

from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode

from ._asyncio_room import ROOM, rooms, run_cli


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


async def run_bench(count: int, size: int, rate: float = 0) -> None:
    pad = "x" * size
    members = rooms[ROOM]
    for i in range(count):
        text = json.dumps({"type": "bench", "seq": i, "t": time.monotonic_ns(), "pad": pad})
        frame = Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])
        for ws in members:
            write_now(ws, frame)
        await asyncio.sleep(0)


def cli() -> None:
    run_cli(__doc__.splitlines()[0], run_bench)


if __name__ == "__main__":
    cli()

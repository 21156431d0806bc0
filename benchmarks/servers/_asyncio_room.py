"""What the websockets-asyncio bench servers share: one room, the bench protocol, READY.

Protocol (the same as trio_rt's bench servers): a ``welcome`` on connect, ``join_room`` ->
``room_joined``, ``bench_start`` (``count``, ``size``, optional ``rate``) -> the server's own
`run_bench`. Each server module supplies only how it broadcasts (`run_bench`), and prints
``READY <port>`` through `serve_and_announce`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

ROOM = "bench"

RunBench = Callable[[int, int, float], Awaitable[None]]  # count, size, rate (0: flat out)

_ids = itertools.count(1)
rooms: defaultdict[str, set[ServerConnection]] = defaultdict(set)


def make_handler(run_bench: RunBench) -> Callable[[ServerConnection], Awaitable[None]]:
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

    return handler


async def serve_and_announce(run_bench: RunBench, host: str, port: int, **options: Any) -> None:
    """Serve the bench protocol; print ``READY <port>`` once listening; run until killed."""
    options = {"compression": None, "ping_interval": None, "backlog": 1024, **options}
    async with serve(make_handler(run_bench), host, port, **options) as server:
        bound_port = next(iter(server.sockets)).getsockname()[1]
        print(f"READY {bound_port}", flush=True)
        await server.serve_forever()


def run_cli(
    description: str,
    run_bench: RunBench,
    *,
    compression_flag: bool = False,
    **options: Any,
) -> None:
    """``--host``/``--port`` (and ``--compression`` when offered), then serve."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    if compression_flag:
        parser.add_argument("--compression", action="store_true")
    args = parser.parse_args()
    if getattr(args, "compression", False):
        options["compression"] = "deflate"
    try:
        asyncio.run(serve_and_announce(run_bench, args.host, args.port, **options))
    except KeyboardInterrupt:
        sys.exit(0)

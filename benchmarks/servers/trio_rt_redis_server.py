"""trio_rt fan-out server on a RedisBroker: ``trio_rt_server`` plus Redis pub/sub between servers.

The same protocol as ``benchmarks.servers.trio_rt_server`` (``welcome``, trio_rt's own
``join_room``, ``{"type": "bench_start", "count": M, "size": S}`` -> M times
``await manager.broadcast_to_room("bench", {"type": "bench", "seq": i, "t": <monotonic ns>,
"pad": "x" * S})``), with ``broker=RedisBroker(--redis-url)``: several of these processes
sharing one Redis form one deployment, and a broadcast started on one reaches the room's
members on all of them.

Run: ``python -m benchmarks.servers.trio_rt_redis_server --redis-url redis://H:P/0
[--host H] [--port P]`` (port 0 = any free port); prints ``READY <port>`` once listening.

As workers: ``BENCH_REDIS_URL=redis://H:P/0 python -m trio_rt serve
benchmarks.servers.trio_rt_redis_server:build_app --workers 2 --port 0`` (`build_app`).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any

import trio

from trio_rt import WebSocketManager
from trio_rt.redis import RedisBroker

from .trio_rt_server import build_manager, main

REDIS_URL_ENV = "BENCH_REDIS_URL"


def build_app(**options: Any) -> WebSocketManager:
    """The factory for ``trio-rt serve --workers N`` (the Redis URL from ``$BENCH_REDIS_URL``)."""
    return build_manager(broker=RedisBroker(os.environ[REDIS_URL_ENV]), **options)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args()
    run = functools.partial(main, args.host, args.port, broker=RedisBroker(args.redis_url))
    try:
        trio.run(run)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    cli()

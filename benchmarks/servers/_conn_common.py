"""What the connection-benchmark servers (``conn_*``) share: the command line, the raised
file-descriptor limit, and the websockets handler of the two websockets peers.

Imports neither trio nor asyncio's server: each server pays in memory only for what it uses.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import sys
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from websockets.exceptions import ConnectionClosed

_ids = itertools.count(1)
# connections opened, closed, and open now (the handler's; trio_rt keeps its own)
counts = {"opened": 0, "closed": 0, "open": 0}


class Connection(Protocol):
    """What `handler` uses of a websockets server connection (asyncio's or Trio's)."""

    async def send(self, message: str) -> None: ...

    def __aiter__(self) -> AsyncIterator[str | bytes]: ...


def raise_fd_limit() -> None:
    """The soft limit of open files up to the hard one: the benchmarks hold thousands."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def handler(ws: Connection) -> None:
    """Sends ``{"type": "welcome", "connection_id": ...}``, then reads messages until the
    connection closes, counting it in `counts`."""
    counts["opened"] += 1
    counts["open"] += 1
    try:
        await ws.send(json.dumps({"type": "welcome", "connection_id": str(next(_ids))}))
        async for _ in ws:
            pass
    except ConnectionClosed:
        pass  # the generator is killed without closing at the end of a phase
    finally:
        counts["open"] -= 1
        counts["closed"] += 1


def arg_parser(description: str) -> argparse.ArgumentParser:
    """``--host``, ``--port`` (0: any free one), ``--heartbeat`` (seconds, default off) and
    ``--compression``; a server adds its own options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--heartbeat", type=float, default=None, help="seconds (default off)")
    parser.add_argument("--compression", action="store_true")
    return parser


def run(main: Callable[[], None]) -> None:
    """Runs the server's `main` with the file limit raised; Ctrl-C exits with status 0."""
    raise_fd_limit()
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)

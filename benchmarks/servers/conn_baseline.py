"""Peer server for the connection benchmarks: websockets' asyncio server.

Same behaviour as ``conn_trio_rt``: on connect it sends ``{"type": "welcome", ...}``, then
reads messages until the connection closes. websockets' own keepalive pings every
``--heartbeat`` seconds (``ping_interval``; ``ping_timeout`` = the interval, as trio_rt's
default). On SIGUSR1 it runs ``gc.collect()`` and prints
``STATE <open connections> 0 <opened> <closed>``.

Run: ``python -m benchmarks.servers.conn_baseline [--host H] [--port P] [--heartbeat S]
[--compression]``; prints ``READY <port>`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import resource
import signal
import sys

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

_ids = itertools.count(1)
counts = {"opened": 0, "closed": 0}


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def handler(ws: ServerConnection) -> None:
    counts["opened"] += 1
    try:
        await ws.send(json.dumps({"type": "welcome", "connection_id": str(next(_ids))}))
        async for _ in ws:
            pass
    except ConnectionClosed:
        pass  # the generator is killed without closing at the end of a phase
    finally:
        counts["closed"] += 1


def report(server: Server) -> None:
    gc.collect()
    print(f"STATE {len(server.connections)} 0 {counts['opened']} {counts['closed']}", flush=True)


async def main(host: str, port: int, heartbeat: float | None, compression: bool) -> None:
    async with serve(
        handler,
        host,
        port,
        compression="deflate" if compression else None,
        ping_interval=heartbeat,
        ping_timeout=heartbeat,
        backlog=4096,
    ) as server:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, report, server)
        bound_port = next(iter(server.sockets)).getsockname()[1]
        print(f"READY {bound_port}", flush=True)
        await server.serve_forever()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--heartbeat", type=float, default=None, help="seconds (default off)")
    parser.add_argument("--compression", action="store_true")
    args = parser.parse_args()
    raise_fd_limit()
    try:
        asyncio.run(main(args.host, args.port, args.heartbeat, args.compression))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    cli()

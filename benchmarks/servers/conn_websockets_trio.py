"""Reference for the connection benchmarks: websockets' own Trio server, without trio_rt.

Not a contender: separates what trio_rt adds from what websockets' Trio implementation costs.
Same behaviour as ``conn_baseline`` (welcome on connect, read until closed, websockets'
keepalive every ``--heartbeat`` s, SIGUSR1 -> ``gc.collect()`` and a ``STATE`` line).

Run: ``python -m benchmarks.servers.conn_websockets_trio [--host H] [--port P]
[--heartbeat S] [--compression]``; prints ``READY <port>`` once listening.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import resource
import signal
import sys

import trio
from websockets.exceptions import ConnectionClosed
from websockets.trio.server import ServerConnection, serve

_ids = itertools.count(1)
counts = {"opened": 0, "closed": 0, "open": 0}


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def handler(ws: ServerConnection) -> None:
    counts["opened"] += 1
    counts["open"] += 1
    try:
        await ws.send(json.dumps({"type": "welcome", "connection_id": str(next(_ids))}))
        async for _ in ws:
            pass
    except ConnectionClosed:
        pass
    finally:
        counts["open"] -= 1
        counts["closed"] += 1


async def main(host: str, port: int, heartbeat: float | None, compression: bool) -> None:
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                lambda task_status: serve(
                    handler,
                    port,
                    host=host,
                    compression="deflate" if compression else None,
                    ping_interval=heartbeat,
                    ping_timeout=heartbeat,
                    task_status=task_status,
                )
            )
            bound_port = server.listeners[0].socket.getsockname()[1]
            print(f"READY {bound_port}", flush=True)
            async for _ in signals:
                gc.collect()
                print(f"STATE {counts['open']} 0 {counts['opened']} {counts['closed']}", flush=True)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--heartbeat", type=float, default=None, help="seconds (default off)")
    parser.add_argument("--compression", action="store_true")
    args = parser.parse_args()
    raise_fd_limit()
    try:
        trio.run(main, args.host, args.port, args.heartbeat, args.compression)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    cli()

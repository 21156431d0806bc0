"""trio_rt server for the connection benchmarks (``benchmarks.connections``).

A bare ``WebSocketManager`` (trio_rt sends its own ``welcome`` on connect), with
``max_connections=None`` and the heartbeat interval and compression given on the command line.
On SIGUSR1 it runs ``gc.collect()`` and prints
``STATE <open connections> <heartbeat timeouts> <opened> <closed>``.

Run: ``python -m benchmarks.servers.conn_trio_rt [--host H] [--port P] [--heartbeat S]
[--compression]``; prints ``READY <port>`` once listening.
"""

from __future__ import annotations

import gc
import signal

import trio

from benchmarks.servers._conn_common import arg_parser, run
from trio_rt import WebSocketManager


async def main(
    host: str,
    port: int,
    heartbeat: float | None,
    compression: bool,
    gc_freeze: float | None,
    context_takeover: bool,
) -> None:
    manager = WebSocketManager(
        host=host,
        port=port,
        heartbeat_interval=heartbeat,
        compression=compression,
        max_connections=None,
        rate_limit=None,  # a load test, not abuse
        gc_freeze_interval=gc_freeze,
        compression_context_takeover=context_takeover,
    )
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        async with trio.open_nursery() as nursery:
            _bound_host, bound_port = await nursery.start(manager.serve)
            print(f"READY {bound_port}", flush=True)
            async for _ in signals:
                gc.collect()
                s = manager.stats
                print(
                    f"STATE {len(manager.connections)} {s.heartbeat_timeouts}"
                    f" {s.connections_opened} {s.connections_closed}",
                    flush=True,
                )


def cli() -> None:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--gc-freeze", type=float, default=None, help="the gc_freeze_interval option (seconds)"
    )
    parser.add_argument(
        "--no-context-takeover",
        action="store_true",
        help="compression_context_takeover=False (shared compressed frames)",
    )
    args = parser.parse_args()
    run(
        lambda: trio.run(
            main,
            args.host,
            args.port,
            args.heartbeat,
            args.compression,
            args.gc_freeze,
            not args.no_context_takeover,
        )
    )


if __name__ == "__main__":
    cli()

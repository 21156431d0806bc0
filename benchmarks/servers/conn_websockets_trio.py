"""Reference for the connection benchmarks: websockets' own Trio server, without trio_rt.

Not a contender: separates what trio_rt adds from what websockets' Trio implementation costs.
Same behaviour as ``conn_baseline`` (welcome on connect, read until closed, websockets'
keepalive every ``--heartbeat`` s, SIGUSR1 -> ``gc.collect()`` and a ``STATE`` line).

Run: ``python -m benchmarks.servers.conn_websockets_trio [--host H] [--port P]
[--heartbeat S] [--compression]``; prints ``READY <port>`` once listening.
"""

from __future__ import annotations

import gc
import signal

import trio
from websockets.trio.server import serve

from benchmarks.servers._conn_common import arg_parser, counts, handler, run


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
    args = arg_parser(__doc__.splitlines()[0]).parse_args()
    run(lambda: trio.run(main, args.host, args.port, args.heartbeat, args.compression))


if __name__ == "__main__":
    cli()

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

import asyncio
import gc
import signal

from websockets.asyncio.server import Server, serve

from benchmarks.servers._conn_common import arg_parser, counts, handler, run


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
    args = arg_parser(__doc__.splitlines()[0]).parse_args()
    run(lambda: asyncio.run(main(args.host, args.port, args.heartbeat, args.compression)))


if __name__ == "__main__":
    cli()

"""trio_rt bench server with pacing and optional compression (for the latency/compress benches).

``benchmarks.servers.trio_rt_server`` plus:

* ``bench_start`` may carry ``"rate": R`` (broadcasts per second): broadcast i is sent at
  ``start + i / R`` (``trio.sleep_until``, absolute schedule, so no drift); absent or 0 = as
  fast as possible, exactly like ``trio_rt_server``;
* ``--compression``: ``WebSocketManager(compression=True)`` (permessage-deflate, negotiated
  only with clients that offer it). Clients without server context takeover share one
  compressed frame per broadcast; others are compressed per connection;
* ``--per-connection-deflate`` (with ``--compression``): for comparison only, turns the shared
  compressed frame off (patches ``trio_rt._engine.connection.shared_deflate_key``), so every
  connection compresses each message itself.

Run: ``python -m benchmarks.servers.latency_trio_rt [--host H] [--port P] [--compression]
[--per-connection-deflate]``; prints ``READY <port>`` once listening.
"""

from __future__ import annotations

import argparse
import functools
import sys

import trio

from .trio_rt_server import main


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--compression", action="store_true")
    parser.add_argument("--per-connection-deflate", action="store_true")
    args = parser.parse_args()
    if args.per_connection_deflate:
        import trio_rt._engine.connection

        trio_rt._engine.connection.shared_deflate_key = lambda extensions: None
    try:
        trio.run(functools.partial(main, args.host, args.port, compression=args.compression))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    cli()

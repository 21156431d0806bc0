"""trio_rt fan-out server: the same behaviour as ``baseline_websockets``, on trio_rt.

* trio_rt sends ``{"type": "welcome", ...}`` on connect and implements ``join_room`` itself
  (reply ``{"type": "room_joined", "room": R}``);
* ``{"type": "bench_start", "count": M, "size": S}`` -> M times
  ``await manager.broadcast_to_room("bench", {"type": "bench", "seq": i, "t": <monotonic ns>,
  "pad": "x" * S})``.

Run: ``python -m benchmarks.servers.trio_rt_server [--host H] [--port P]``
(port 0 = any free port); prints ``READY <port>`` on stdout once listening.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import trio

from trio_rt import WebSocketManager

ROOM = "bench"


def build_manager(**options: Any) -> WebSocketManager:
    """The bench app with `options` (WebSocketManager options, e.g. a broker, host, port);
    ``bench_start`` may carry ``"rate"`` (broadcasts per second, absolute schedule; absent or
    0: as fast as possible)."""
    manager = WebSocketManager(
        **{"compression": False, "heartbeat_interval": None, **options},
        rate_limit=None,  # a load test, not abuse
    )

    @manager.on_message("bench_start")
    async def start(conn: Any, message: dict[str, Any]) -> None:
        pad = "x" * int(message.get("size", 0))
        rate = float(message.get("rate", 0) or 0)
        t0 = trio.current_time()
        for i in range(int(message["count"])):
            if rate > 0:
                await trio.sleep_until(t0 + i / rate)
            await manager.broadcast_to_room(
                ROOM, {"type": "bench", "seq": i, "t": time.monotonic_ns(), "pad": pad}
            )

    return manager


async def main(host: str, port: int, **options: Any) -> None:
    """Serve the bench protocol (`build_manager`) on host:port; prints ``READY <port>``."""
    manager = build_manager(host=host, port=port, **options)

    async with trio.open_nursery() as nursery:
        _bound_host, bound_port = await nursery.start(manager.serve)
        print(f"READY {bound_port}", flush=True)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        trio.run(main, args.host, args.port)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    cli()

"""A trio_rt app for the scale-out tests: one of several server processes sharing one Redis.

Run: ``TRIO_RT_SCALE_OUT_REDIS_URL=redis://... python -m trio_rt serve
tests.integration.scale_out_server:build_app --host 127.0.0.1 --port 0`` from the repository root.
The CLI prints ``trio_rt listening on ws://HOST:PORT/ ...`` once ready and shuts down gracefully on
SIGTERM (clients get 1001).

App message: ``{"type": "publish", "room": R, "n": N}`` makes this server broadcast
``{"type": "m", "n": N, "origin": <this server's server_id>}`` to room R (on every server,
through the Redis broker).
"""

from __future__ import annotations

import os
from typing import Any

from trio_rt import Connection, WebSocketManager
from trio_rt.redis import RedisBroker

REDIS_URL_ENV = "TRIO_RT_SCALE_OUT_REDIS_URL"


def build_app(**options: Any) -> WebSocketManager:
    """The factory for ``python -m trio_rt serve``; the Redis URL comes from the environment."""
    redis_url = os.environ[REDIS_URL_ENV]
    options.setdefault("heartbeat_interval", None)
    manager = WebSocketManager(broker=RedisBroker(redis_url), **options)

    @manager.on_message("publish")
    async def publish(conn: Connection, message: dict[str, Any]) -> None:
        await manager.broadcast_to_room(
            str(message["room"]),
            {"type": "m", "n": int(message["n"]), "origin": manager.server_id},
        )

    return manager

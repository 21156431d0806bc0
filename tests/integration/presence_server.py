"""A trio_rt app for the presence scale-out tests: one of several server processes sharing one
Redis (broker and presence).

Run: ``TRIO_RT_PRESENCE_REDIS_URL=redis://... TRIO_RT_PRESENCE_PREFIX=p TRIO_RT_PRESENCE_TTL=1
python -m trio_rt serve tests.integration.presence_server:build_app --host 127.0.0.1 --port 0``. A
connection's user is its ``?user=<id>`` query parameter (no auth here); its public info is
``{"name": <id in capitals>}``. Rooms starting with ``ev-`` send join/leave events.
"""

from __future__ import annotations

import os
from typing import Any

from trio_rt import Connection, PresenceService, WebSocketManager
from trio_rt.redis import RedisBroker, RedisPresence

REDIS_URL_ENV = "TRIO_RT_PRESENCE_REDIS_URL"
PREFIX_ENV = "TRIO_RT_PRESENCE_PREFIX"
TTL_ENV = "TRIO_RT_PRESENCE_TTL"


def build_app(**options: Any) -> WebSocketManager:
    """The factory for ``python -m trio_rt serve``; Redis and the ttl come from the environment."""
    redis_url = os.environ[REDIS_URL_ENV]
    prefix = os.environ[PREFIX_ENV]
    options.setdefault("heartbeat_interval", None)
    options.setdefault("channel_prefix", prefix)
    manager = WebSocketManager(broker=RedisBroker(redis_url), **options)

    @manager.on_connection
    async def who(conn: Connection) -> None:
        users = conn.request.query.get("user")
        conn.user_id = users[0] if users else None

    PresenceService(
        manager,
        RedisPresence(redis_url, prefix=prefix),
        info=lambda conn: {"name": (conn.user_id or "").upper()},
        events=lambda room: room.startswith("ev-"),
        ttl=float(os.environ.get(TTL_ENV, "30")),
    )
    return manager

"""Apps for the worker tests (tests/test_workers.py): run by ``trio-rt serve --workers N``.

- ``build_app``: `RedisBroker` on ``$WORKERS_TEST_REDIS_URL``, channels under
  ``$WORKERS_TEST_PREFIX``. App message ``{"type": "publish", "room": R, "n": N}`` broadcasts
  ``{"type": "m", "n": N, "origin": <server_id>}`` to room R and answers
  ``{"type": "published", "n": N}``. The welcome's ``server_id`` ends in ``-w<worker>``.
- ``build_memory_app``: the same on a `MemoryBroker` (refused with several workers).
- ``build_crashing_app``: raises while it is built (a worker that cannot start).
- ``build_crashing_app_once``: raises the first time in each worker slot
  (``$WORKERS_TEST_MARKS``: a directory of marker files), then builds `build_app`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trio_rt import Connection, MemoryBroker, WebSocketManager


def _handlers(manager: WebSocketManager) -> WebSocketManager:
    @manager.on_message("publish")
    async def publish(conn: Connection, message: dict[str, Any]) -> None:
        n = int(message["n"])
        await manager.broadcast_to_room(
            str(message["room"]), {"type": "m", "n": n, "origin": manager.server_id}
        )
        await conn.send({"type": "published", "n": n})

    return manager


def build_app(**options: Any) -> WebSocketManager:
    from trio_rt.redis import RedisBroker

    options.setdefault("heartbeat_interval", None)
    options.setdefault("rate_limit", None)
    options.setdefault("channel_prefix", os.environ.get("WORKERS_TEST_PREFIX", "workers"))
    options.setdefault("shutdown_timeout", 5.0)
    manager = WebSocketManager(broker=RedisBroker(os.environ["WORKERS_TEST_REDIS_URL"]), **options)
    return _handlers(manager)


def build_memory_app(**options: Any) -> WebSocketManager:
    return _handlers(WebSocketManager(broker=MemoryBroker(), **options))


def build_crashing_app(**options: Any) -> WebSocketManager:
    raise RuntimeError("this app cannot start")


def build_crashing_app_once(**options: Any) -> WebSocketManager:
    marks = Path(os.environ["WORKERS_TEST_MARKS"])
    mark = marks / f"worker-{os.environ['TRIO_RT_WORKER_ID']}"
    if not mark.exists():
        mark.touch()
        raise RuntimeError("the first start of each worker fails")
    return build_app(**options)

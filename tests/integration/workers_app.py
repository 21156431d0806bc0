"""Apps for the worker tests (tests/integration/test_workers.py): run by
``trio-rt serve --workers N``.

- ``build_app``: `RedisBroker` on ``$WORKERS_TEST_REDIS_URL``, channels under
  ``$WORKERS_TEST_PREFIX``. App message ``{"type": "publish", "room": R, "n": N}`` broadcasts
  ``{"type": "m", "n": N, "origin": <server_id>}`` to room R and answers
  ``{"type": "published", "n": N}``. The welcome's ``server_id`` ends in ``-w<worker>``.
- ``build_memory_app``: the same on a `MemoryBroker` (refused with several workers).
- ``build_crashing_app``: raises while it is built (a worker that cannot start).
- ``build_app_dropping_options``: names its server and ignores the command's options.
- ``build_stuck_app``: `build_app` whose shutdown never ends (a service that will not stop).
"""

from __future__ import annotations

import os
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


def build_stuck_app(**options: Any) -> WebSocketManager:
    """`build_app` with a service whose end takes 10 minutes (a shutdown that hangs): a worker
    that does not end after SIGTERM."""
    import trio

    manager = build_app(**options)

    async def stuck(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(600)

    manager.add_service(stuck)
    return manager


def build_app_dropping_options(**options: Any) -> WebSocketManager:
    """A factory that names its server and does not pass the command's options on: the
    workers would share one server_id (the supervisor refuses that)."""
    from trio_rt.redis import RedisBroker

    return WebSocketManager(
        broker=RedisBroker(os.environ["WORKERS_TEST_REDIS_URL"]),
        server_id="same",
        heartbeat_interval=None,
        shutdown_timeout=5.0,
    )

"""A server whose rooms other backends publish into over HTTP (docs/server-api.md).

Run: ``TRIO_RT_API_KEY=<at least 16 characters> python -m trio_rt serve
trio_rt_examples.server_api:build_app --port 3001``; the API listens on port 8081 (set
``TRIO_RT_API_PORT``), and ``node examples/server_api_publish.mjs http://127.0.0.1:8081 <key>
lobby "hello"`` publishes into room ``lobby`` with Node's own ``fetch``.
"""

from __future__ import annotations

import os
from typing import Any

from trio_rt import APIKey, Publisher, RoomHistory, ServerAPI, WebSocketManager


def build_app(**options: Any) -> WebSocketManager:
    """The factory for ``python -m trio_rt serve``."""
    manager = WebSocketManager(history=RoomHistory(), **options)
    # Clients may publish too, with acks (the same idempotency store as the API's).
    publisher = Publisher(manager)
    manager.server_api = ServerAPI(  # type: ignore[attr-defined]
        manager,
        keys=[APIKey("backend", os.environ["TRIO_RT_API_KEY"])],
        publisher=publisher,
        host=os.environ.get("TRIO_RT_API_HOST", "127.0.0.1"),
        port=int(os.environ.get("TRIO_RT_API_PORT", "8081")),
    )
    return manager

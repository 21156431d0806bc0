"""Capability section "Error Handling and Reconnection", in trio_rt.

Server side: an exception in a handler is logged with its traceback, the error handlers run,
the client gets ``{"type": "error", "code": "internal_error", ...}`` and stays connected.
Client side: ``trio_rt.client.WebSocketClient`` reconnects with exponential backoff and jitter
(the TypeScript original's 1 s * 2^attempt, at most 5 attempts), queues what is sent while offline
and rejoins its rooms.
"""

from __future__ import annotations

import logging
from typing import Any

from trio_rt import Connection, WebSocketManager
from trio_rt.client import WebSocketClient

log = logging.getLogger("examples.capabilities.error_handling")


def build_app(**options: object) -> WebSocketManager:
    ws_manager = WebSocketManager(**options)  # type: ignore[arg-type]

    @ws_manager.on_message("fragile")
    async def fragile(ws: Connection, data: dict[str, Any]) -> None:
        raise RuntimeError("something broke")

    # Server-side error handling
    @ws_manager.on_error
    async def on_error(ws: Connection, error: Exception) -> None:
        log.error("WebSocket error: %r", error)

    return ws_manager


def make_client(url: str) -> WebSocketClient:
    # Client-side reconnection logic: 1 s, 2 s, 4 s, ... with jitter, at most 5 attempts.
    return WebSocketClient(url, initial_delay=1.0, max_delay=30.0, max_attempts=5)

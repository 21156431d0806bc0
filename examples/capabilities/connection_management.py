"""Capability section "Connection Management", in trio_rt.

The connection handler runs during the handshake: it can refuse the upgrade (HTTP 401 here),
set ``conn.user_id`` (the TypeScript original's ``ws.userId``), join the user's personal room and
queue a message. The disconnect handler always runs, with the close code.
"""

from __future__ import annotations

import logging

from trio_rt import Connection, Reject, WebSocketManager

log = logging.getLogger("examples.capabilities.connection_management")

# Stands in for the TypeScript original's authenticateUser(); authentication.py verifies real JWTs
# (examples/capabilities/README.md maps every section of the capability list to its module;
# docs/security.md).
TOKENS = {"token-ann": "ann", "token-bob": "bob"}


async def authenticate_user(authorization: str | None) -> str:
    if not authorization or not authorization.startswith("Bearer "):
        raise Reject(401, "no authorization header")
    user_id = TOKENS.get(authorization.removeprefix("Bearer "))
    if user_id is None:
        raise Reject(401, "invalid token")
    return user_id


def build_app(**options: object) -> WebSocketManager:
    ws_manager = WebSocketManager(**options)  # type: ignore[arg-type]

    @ws_manager.on_connection
    async def on_connection(ws: Connection) -> None:
        ws.user_id = await authenticate_user(ws.request.headers.get("Authorization"))
        log.info("User %s connected", ws.user_id)
        # Join the user to their personal room
        await ws_manager.join_room(ws, f"user:{ws.user_id}")
        # The built-in welcome goes first; this follows it.
        await ws.send({"type": "welcome", "message": "Connected successfully"})

    @ws_manager.on_disconnect
    async def on_disconnect(ws: Connection, code: int) -> None:
        log.info("User %s disconnected (%d)", ws.user_id, code)
        # Rooms and subscriptions are cleaned up by trio_rt itself.

    return ws_manager

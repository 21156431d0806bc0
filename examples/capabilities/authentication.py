"""Capability section "Authentication and Authorization", in trio_rt.

- The TypeScript original's ``authenticateUser(authHeader)`` (``jwt.verify(token, JWT_SECRET)``,
  then ``decoded.userId``) is a `JWTAuthenticator`: it reads ``Authorization: Bearer <token>`` (or
  the ``bearer.<token>`` subprotocol entry browsers use) during the handshake, verifies it with a
  `TokenVerifier`, sets ``conn.user_id`` from the claim and refuses the upgrade with HTTP 401
  otherwise. No connection exists for an unauthenticated client.
- ``hasPermission(userId, resource, action)`` over the TypeScript original's ``UserPermission``
  table is a `PermissionStore` behind ``manager.authorize`` (`MemoryPermissionStore` here;
  `CassandraPermissionStore` keeps the same grants in Cassandra). trio_rt asks it itself before
  a client joins a private room or broadcasts with ``room_field``; the app asks it for the rest.
- The TypeScript original's per-user rate limiter (100 messages per minute, a Map of counters) is
  built in: ``rate_limit=100, rate_limit_period=60`` (the defaults) give each user one token bucket
  shared by all their connections; a refused message gets ``rate_limited`` with
  ``retry_after``. `RedisRateLimiter` shares the buckets between servers.

Needs the `auth` extra (pyjwt): ``pip install 'trio_rt[auth]'``. docs/security.md has the rest.
"""

from __future__ import annotations

from typing import Any

from trio_rt import (
    Connection,
    ErrorCode,
    JWTAuthenticator,
    MemoryPermissionStore,
    ProtocolError,
    TokenVerifier,
    WebSocketManager,
)


def permissions() -> MemoryPermissionStore:
    """The TypeScript original's UserPermission rows: (user, resource, actions)."""
    store = MemoryPermissionStore()
    store.grant("ann", "room:staff", "join", "broadcast")
    store.grant("ann", "table:payroll", "read")
    store.grant("*", "room:*", "broadcast")  # anyone may write to the rooms they are in
    return store


async def build_app(jwt_secret: str, **options: Any) -> WebSocketManager:
    options.setdefault(
        "rate_limit", 100
    )  # messages per user per minute (the TypeScript original's numbers)
    options.setdefault("rate_limit_period", 60.0)
    ws_manager = WebSocketManager(permissions=permissions(), **options)

    # JWT-based authentication: the TypeScript original's tokens carry the user in `userId`.
    verifier = TokenVerifier(jwt_secret, ("HS256",), user_claim="userId", required_claims=("exp",))
    ws_manager.on_connection(JWTAuthenticator(verifier))

    # Join checks apply to private rooms: only users granted `join` (or moderators) get in.
    await ws_manager.create_room("staff", private=True)

    @ws_manager.on_message("chat_message", room_field="payload.room")  # `broadcast` checked
    async def chat(ws: Connection, data: dict[str, Any]) -> None:
        room, message = data["payload"]["room"], data["payload"].get("message")
        if not isinstance(message, str):
            raise ProtocolError(ErrorCode.INVALID_FIELD, "'payload.message' must be a string")
        if room not in ws.rooms:
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"join room {room!r} before writing to it")
        await ws_manager.broadcast_to_room(
            room, {"type": "chat_message", "data": {"user_id": ws.user_id, "message": message}}
        )

    # Permission-based access control for the app's own resources.
    @ws_manager.on_message("query")
    async def query(ws: Connection, data: dict[str, Any]) -> None:
        table = data.get("table")
        if not isinstance(table, str):
            raise ProtocolError(ErrorCode.INVALID_FIELD, "'table' must be a string")
        if not await ws_manager.authorize(ws, f"table:{table}", "read"):
            raise ProtocolError(ErrorCode.NOT_PERMITTED, "Insufficient permissions")
        await ws.send({"type": "query_result", "table": table, "rows": []})

    return ws_manager

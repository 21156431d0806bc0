"""Capability section "Message Handling", in trio_rt.

Instead of one ``on('message')`` with a ``switch``, each message type gets its own handler; the
built-in parser has already checked that the frame is a JSON object with a string ``type``, and
unknown types get an ``unknown_type`` error. A handler raises ``ProtocolError`` to answer with an
``error`` reply; any other exception is logged and answered with ``internal_error``.
Table subscriptions (the TypeScript original's ``subscribe``) are a built-in message: see
examples/capabilities/change_streams.py.
"""

from __future__ import annotations

from typing import Any

from trio_rt import Connection, ErrorCode, MemoryPermissionStore, ProtocolError, WebSocketManager

# The TypeScript original's hasPermission(): a PermissionStore behind manager.authorize
# (docs/security.md). CassandraPermissionStore keeps the same grants in the TypeScript original's
# UserPermission table.
PERMISSIONS = MemoryPermissionStore()
PERMISSIONS.grant("ann", "table:posts", "read")
PERMISSIONS.grant("*", "room:*", "broadcast")


def build_app(**options: object) -> WebSocketManager:
    ws_manager = WebSocketManager(permissions=PERMISSIONS, **options)  # type: ignore[arg-type]

    @ws_manager.on_connection
    async def identify(ws: Connection) -> None:
        ws.user_id = ws.request.query.get("user", [None])[0]

    # room_field: trio_rt checks the room name and the `broadcast` permission first.
    @ws_manager.on_message("chat_message", room_field="payload.room")
    async def handle_chat_message(ws: Connection, data: dict[str, Any]) -> None:
        payload = data["payload"]  # an object with a valid room name: room_field checked it
        room, message = payload["room"], payload.get("message")
        if not isinstance(message, str):
            raise ProtocolError(ErrorCode.INVALID_FIELD, "'payload.message' must be a string")
        if room not in ws.rooms:  # only members write to a room
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"join room {room!r} before writing to it")
        await ws_manager.broadcast_to_room(
            room, {"type": "chat_message", "data": {"user_id": ws.user_id, "message": message}}
        )

    @ws_manager.on_message("query")
    async def handle_database_query(ws: Connection, data: dict[str, Any]) -> None:
        payload = data.get("payload")
        table = payload.get("table") if isinstance(payload, dict) else None
        if not isinstance(table, str):
            raise ProtocolError(ErrorCode.INVALID_FIELD, "'payload.table' must be a string")
        if not await ws_manager.authorize(ws, f"table:{table}", "read"):
            raise ProtocolError(ErrorCode.NOT_PERMITTED, "Insufficient permissions")
        await ws.send({"type": "query_result", "table": table, "rows": []})

    return ws_manager

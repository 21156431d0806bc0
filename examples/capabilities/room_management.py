"""Capability section "Room Management", in trio_rt.

``join_room`` / ``leave_room`` are built into the protocol (replies ``room_joined`` /
``room_left``, errors ``room_full`` / ``not_permitted``), so no message handler is needed for
them. Rooms keep their settings in memory; ``persistent=True`` rooms survive being empty.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from trio_rt import Connection, ErrorCode, ProtocolError, WebSocketManager


async def build_app(**options: object) -> WebSocketManager:
    ws_manager = WebSocketManager(**options)  # type: ignore[arg-type]

    # Create and manage rooms
    await ws_manager.create_room(
        "chat:general", max_users=100, persistent=True, moderators=["admin", "moderator"]
    )

    @ws_manager.on_connection
    async def identify(ws: Connection) -> None:
        ws.user_id = ws.request.query.get("user", ["guest"])[0]

    # Room-based messaging
    @ws_manager.on_message("chat_message")
    async def handle_chat_message(ws: Connection, data: dict[str, Any]) -> None:
        payload = data.get("payload")
        room = payload.get("room") if isinstance(payload, dict) else None
        message = payload.get("message") if isinstance(payload, dict) else None
        if not isinstance(room, str) or not isinstance(message, str):
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, "'payload.room' and 'payload.message' must be strings"
            )
        if room not in ws.rooms:  # only members write to a room
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, "join the room first")
        # (Storing the message in Cassandra comes with the history feature.)
        await ws_manager.broadcast_to_room(
            room,
            {
                "type": "chat_message",
                "data": {
                    "user_id": ws.user_id,
                    "message": message,
                    "timestamp": datetime.now(UTC).isoformat(),
                },
            },
        )

    return ws_manager

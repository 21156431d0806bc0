"""Capability section "Real-time Data Broadcasting", in trio_rt.

Each broadcast is serialized once; a member of several target rooms receives it once.
"""

from __future__ import annotations

from trio_rt import WebSocketManager


async def announce(ws_manager: WebSocketManager) -> None:
    # Broadcast to all connections
    await ws_manager.broadcast(
        {"type": "system_announcement", "message": "System maintenance in 10 minutes"}
    )
    # Broadcast to specific room
    await ws_manager.broadcast_to_room(
        "user:123", {"type": "notification", "data": {"message": "New message received"}}
    )
    # Broadcast to multiple rooms
    await ws_manager.broadcast_to_rooms(
        ["admin", "moderator"],
        {"type": "alert", "data": {"level": "warning", "message": "High CPU usage detected"}},
    )

"""The samples of docs/rooms.md, run by tests/integration/test_doc_samples.py."""

from __future__ import annotations

from typing import Any

from trio_rt import Connection, MemoryBroker, MemoryHub, WebSocketManager


def rooms_app(**options: Any) -> tuple[WebSocketManager, list[dict[str, Any]]]:
    """A server whose ``rooms_tour`` message walks through the room API; what the calls
    returned is appended to the list."""
    manager = WebSocketManager(**options)
    seen: list[dict[str, Any]] = []

    @manager.on_connection
    async def identify(conn: Connection) -> None:
        conn.user_id = conn.request.query.get("user", [None])[0]

    @manager.on_message("rooms_tour")
    async def tour(conn: Connection, message: dict[str, Any]) -> None:
        # --8<-- [start:rooms]
        await manager.create_room(
            "chat:general", max_users=100, persistent=True, moderators=["admin"]
        )
        await manager.join_room(conn, "chat:general")  # idempotent; RoomError(room_full) when full
        rooms = manager.rooms_of(conn)  # frozenset of room names
        members = manager.members_of("chat:general")  # frozenset of this server's Connections
        await manager.kick("chat:general", "bob", by="admin")  # every connection of user bob
        await manager.leave_room(conn, "chat:general")  # idempotent
        await manager.delete_room("chat:general")
        # --8<-- [end:rooms]
        seen.append({"rooms": rooms, "members": members, "exists": "chat:general" in manager.rooms})

    return manager, seen


def broadcast_app(**options: Any) -> WebSocketManager:
    """A server whose ``fan_out`` message makes the three kinds of broadcast."""
    manager = WebSocketManager(**options)

    @manager.on_message("fan_out")
    async def fan_out(conn: Connection, message: dict[str, Any]) -> None:
        data = {"type": "news", "text": message["text"]}
        room, r1, r2 = "lobby", "r1", "r2"
        # --8<-- [start:broadcasts]
        await manager.broadcast(data, exclude=conn)  # every client on every server
        await manager.broadcast_to_room(room, data, exclude=conn)
        await manager.broadcast_to_rooms([r1, r2], data)  # a member of both gets it once
        # --8<-- [end:broadcasts]

    return manager


def servers_sharing(hub: MemoryHub, heard: list[tuple[dict[str, Any], str]]) -> WebSocketManager:
    """A server of a deployment (here: in one process, sharing `hub`)."""
    manager = WebSocketManager(host="127.0.0.1", port=0, broker=MemoryBroker(hub))

    # --8<-- [start:cross-server]
    @manager.on("cross_server_message")  # or @manager.on_cross_server_message
    async def on_server_message(message: dict[str, Any], origin: str) -> None:
        heard.append((message, origin))  # origin: the sending server's server_id

    # --8<-- [end:cross-server]
    return manager


async def reload_everywhere(manager: WebSocketManager) -> None:
    # --8<-- [start:send-to-servers]
    await manager.send_to_servers({"type": "reload", "what": "config"})
    # --8<-- [end:send-to-servers]


def on_redis(url: str = "redis://10.0.0.5:6379/0", port: int = 3001) -> WebSocketManager:
    # --8<-- [start:redis]
    from trio_rt import RedisBroker, WebSocketManager

    manager = WebSocketManager(port=port, broker=RedisBroker(url))  # "redis://10.0.0.5:6379/0"
    # --8<-- [end:redis]
    return manager


def on_redis_cluster(url: str = "redis://10.0.0.6:7000", port: int = 3001) -> WebSocketManager:
    from trio_rt import RedisBroker

    # --8<-- [start:redis-cluster]
    # Redis Cluster: sharded pub/sub (SSUBSCRIBE/SPUBLISH), each channel on its slot's shard
    manager = WebSocketManager(port=port, broker=RedisBroker(url, cluster=True))  # any node
    # --8<-- [end:redis-cluster]
    return manager

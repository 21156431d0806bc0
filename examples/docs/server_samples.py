"""The samples of docs/server.md, run by tests/integration/test_doc_samples.py."""

from __future__ import annotations

from typing import Any

import trio

from trio_rt import Connection, ErrorCode, ProtocolError, Reject, WebSocketManager


async def serve_in_a_block(host: str = "0.0.0.0", port: int = 3001) -> tuple[str, int]:
    """Serve inside ``async with``; return the address it served on."""
    # --8<-- [start:run-block]
    async with WebSocketManager(host=host, port=port) as manager:  # "0.0.0.0", 3001
        ...  # serving; leaving the block shuts down gracefully
        # --8<-- [end:run-block]
        return manager.address


async def serve_in_a_nursery(manager: WebSocketManager) -> tuple[str, int]:
    """Serve in a nursery of our own; return the address `nursery.start` gave."""
    async with trio.open_nursery() as nursery:
        # --8<-- [start:run-nursery]

        # or, in a nursery you own:
        host, port = await nursery.start(manager.serve)  # port=0 picks a free port: the real one
        ...
        manager.stop()  # or cancel the nursery: both shut down gracefully
        # --8<-- [end:run-nursery]
    return host, port


def register_handlers(manager: WebSocketManager, log: list[tuple[Any, ...]]) -> None:
    """Every way to register a handler; each handler appends what it saw to `log`."""

    # --8<-- [start:handlers]
    @manager.on_connection  # during the handshake; may raise Reject(status, reason)
    async def identify(conn: Connection) -> None:
        if conn.request.query.get("user") == ["mallory"]:
            raise Reject(403, "not you")
        conn.user_id = conn.request.query.get("user", [None])[0]

    @manager.on_message("move")  # messages {"type": "move", ...}, one at a time, in order
    async def move(conn: Connection, message: dict[str, Any]) -> None:
        log.append(("move", conn.user_id, message))

    @manager.on_message("chat", room_field="room")  # a client broadcast: permission checked
    async def chat(conn: Connection, message: dict[str, Any]) -> None:
        if message["room"] not in conn.rooms:  # the membership check is the app's
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, "join the room before writing to it")
        await manager.broadcast_to_room(message["room"], message, exclude=conn)

    @manager.on_message()  # every type without a handler of its own
    async def fallback(conn: Connection, message: dict[str, Any]) -> None:
        if message["type"] == "boom":
            raise RuntimeError("boom")  # goes to the error handlers
        log.append(("fallback", conn.user_id, message))

    @manager.on_disconnect
    async def gone(conn: Connection, close_code: int) -> None:
        log.append(("disconnect", conn.user_id, close_code))

    @manager.on_error  # exceptions of message handlers
    async def failed(conn: Connection, exc: Exception) -> None:
        log.append(("error", conn.user_id, repr(exc)))

    # the TypeScript original's spelling: @manager.on("connection" | "message" | "disconnect" |
    # "error")
    @manager.on("disconnect")
    async def gone_too(conn: Connection, close_code: int) -> None:
        log.append(("disconnect (event spelling)", conn.user_id, close_code))

    # --8<-- [end:handlers]

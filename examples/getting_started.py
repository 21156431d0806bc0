"""The samples of docs/getting-started.md and docs/concepts.md, run by
tests/integration/test_examples.py.

Sections between ``# --8<-- [start:NAME]`` and ``# --8<-- [end:NAME]`` are included in the
pages with pymdownx.snippets: what the site shows is what the tests run.
"""

from __future__ import annotations

from typing import Any

import trio

# --8<-- [start:server]
from trio_rt import Connection, ErrorCode, ProtocolError, WebSocketManager


def build_server(**options: Any) -> WebSocketManager:
    manager = WebSocketManager(**options)  # host="127.0.0.1", port=3001 by default

    @manager.on_connection
    async def identify(conn: Connection) -> None:  # during the handshake
        conn.user_id = conn.request.query.get("user", ["guest"])[0]

    @manager.on_message("say")
    async def say(conn: Connection, message: dict[str, Any]) -> None:
        room, text = message.get("room"), message.get("text")
        if not isinstance(room, str) or not isinstance(text, str):  # an error reply, not a crash
            raise ProtocolError(ErrorCode.INVALID_FIELD, "'room' and 'text' must be strings")
        if room not in conn.rooms:  # only members write to a room
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"join room {room!r} before writing to it")
        await manager.broadcast_to_room(room, {"type": "said", "user": conn.user_id, "text": text})

    return manager


# --8<-- [end:server]


# --8<-- [start:client]
from trio_rt.client import WebSocketClient  # noqa: E402


async def chat_once(url: str) -> dict[str, Any]:
    """Join a room, say something, and return what the room hears."""
    async with WebSocketClient(url) as client:
        await client.join_room("lobby")  # rejoined by itself after a reconnect
        await client.send({"type": "say", "room": "lobby", "text": "hello"})
        async for message in client:
            if message["type"] == "said":
                return message
    raise RuntimeError("the client closed before the reply")


# --8<-- [end:client]


# --8<-- [start:run]
async def main(port: int = 3001) -> None:
    async with build_server(port=port) as manager:  # serves inside the block
        said = await chat_once(manager.url + "?user=ann")
        print(said)  # {'type': 'said', 'user': 'ann', 'text': 'hello'}


# --8<-- [end:run]


# --8<-- [start:brokers]
from trio_rt import MemoryBroker, MemoryHub  # noqa: E402


async def two_servers() -> list[dict[str, Any]]:
    """Two servers sharing a broker: a broadcast on one reaches the room on the other."""
    hub = MemoryHub()  # in one process; RedisBroker(url) across processes and machines
    a = build_server(port=0, broker=MemoryBroker(hub))
    b = build_server(port=0, broker=MemoryBroker(hub))
    async with a, b, WebSocketClient(b.url + "?user=bob") as bob:
        await bob.join_room("lobby")  # bob is connected to server b
        heard = await chat_once(a.url + "?user=ann")  # ann talks to server a
        return [heard, await bob.receive()]


# --8<-- [end:brokers]


if __name__ == "__main__":  # pragma: no cover
    trio.run(main)

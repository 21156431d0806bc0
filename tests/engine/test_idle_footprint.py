"""What an open, idle connection keeps (docs/performance.md, "memory per idle connection"):
the handshake's leftovers are released once the connection is open, without changing what
the app sees."""

from __future__ import annotations

from typing import Any

from trio_rt import Connection

from ..conftest import client


async def test_open_connection_keeps_a_copy_of_the_headers_not_websockets_request(
    make_manager: Any,
) -> None:
    manager = make_manager(heartbeat_interval=30)

    @manager.on_message("echo")
    async def echo(conn: Connection, msg: dict[str, Any]) -> None:
        await conn.send({"type": "echoed", "n": msg["n"]})

    async with manager:
        headers = [("X-Tag", "a"), ("x-tag", "b"), ("Authorization", "Bearer t")]
        async with client(manager, "/", additional_headers=headers) as c:
            (conn,) = manager.connections.values()
            h = conn.request.headers
            # Case-insensitive, a repeated header's values joined, names listed lower-case.
            assert h["X-TAG"] == h["x-tag"] == "a, b"
            assert h.get("authorization") == "Bearer t" and h.get("missing") is None
            assert "Host" in h and "host" in list(h) and len(h) == len(set(h))
            assert all(name == name.lower() for name in h)
            ws: Any = conn._ws
            # websockets' request and response are gone (its parser keeps the request: its
            # headers are emptied), and so is the send lock, never taken by an idle connection.
            assert ws.request is None and ws.response is None
            assert ws.protocol.state.name == "OPEN"
            assert ws.send_lock._lock is None and not ws.send_lock.locked()
            # Frames still reach the connection once the request is dropped.
            assert await c.request({"type": "echo", "n": 1}) == {"type": "echoed", "n": 1}
            assert await c.request({"type": "echo", "n": 2}) == {"type": "echoed", "n": 2}

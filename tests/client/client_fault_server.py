"""A trio_rt app for the client fault tests (tests/client/test_client_faults.py), run as a separate
process so a test can kill it with SIGKILL.

Run: ``python -m trio_rt serve tests.client.client_fault_server:build_app --host 127.0.0.1 --port
P`` from the repository root. The CLI prints ``trio_rt listening on ws://HOST:PORT/ ...`` once
ready.

Every room has history (in memory: a restarted process starts a new epoch).

App messages:

* ``{"type": "flood", "count": N}``: this connection receives ``{"type": "flood", "n": i}`` for
  i in 0..N-1, as fast as the server can write them; then the process prints ``flood over``
  (also when the connection ended first).
* ``{"type": "publish", "room": R, "count": N, "start": S}``: N broadcasts
  ``{"type": "m", "n": S + i}`` to room R, each with a position; answered by
  ``{"type": "published", "room": R, "last": <position of the last one>}``.
"""

from __future__ import annotations

from typing import Any

from trio_rt import Connection, RoomHistory, WebSocketManager


def build_app(**options: Any) -> WebSocketManager:
    """The factory for ``python -m trio_rt serve``."""
    options.setdefault("heartbeat_interval", None)
    manager = WebSocketManager(history=RoomHistory(), **options)

    @manager.on_message("flood")
    async def flood(conn: Connection, message: dict[str, Any]) -> None:
        count = int(message["count"])
        try:
            for n in range(count):
                await conn.send({"type": "flood", "n": n})
        finally:  # also when the client went away mid-flood
            print("flood over", flush=True)  # the test may kill the process after this line

    @manager.on_message("publish")
    async def publish(conn: Connection, message: dict[str, Any]) -> None:
        room = str(message["room"])
        start = int(message.get("start", 0))
        last = None
        for n in range(start, start + int(message["count"])):
            last = await manager.broadcast_to_room(room, {"type": "m", "n": n})
        await conn.send(
            {"type": "published", "room": room, "last": None if last is None else last.to_json()}
        )

    return manager

"""Room history, positions and recovery over real sockets, with the in-memory backends."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from trio_rt import WebSocketManager
from trio_rt._history import RoomHistory
from trio_rt._streams import MemorySequencer, MemoryStreamStore

from .conftest import client, wait_until


def history_manager(make_manager: Any, **kwargs: Any) -> WebSocketManager:
    manager: WebSocketManager = make_manager(history=RoomHistory(**kwargs))
    return manager


async def test_room_messages_carry_positions_and_history_pages(make_manager: Any) -> None:
    async with history_manager(make_manager) as manager, client(manager) as c:
        joined = await c.request({"type": "join_room", "room": "r", "id": 1})
        assert joined["type"] == "room_joined" and joined["position"]["offset"] == 0
        epoch = joined["position"]["epoch"]
        positions = [
            await manager.broadcast_to_room("r", {"type": "chat", "n": i}) for i in range(5)
        ]
        for i in range(5):
            msg = await c.recv()
            assert msg["n"] == i and msg["room"] == "r"
            assert msg["position"] == {"offset": i + 1, "epoch": epoch}
            assert positions[i] is not None and positions[i].offset == i + 1  # type: ignore[union-attr]
        page = await c.request({"type": "history", "room": "r", "limit": 2, "id": 2})
        assert page["id"] == 2 and [m["n"] for m in page["messages"]] == [3, 4]
        assert page["position"] == {"offset": 5, "epoch": epoch}
        older = await c.request(
            {"type": "history", "room": "r", "limit": 10, "before": page["messages"][0]["position"]}
        )
        assert [m["n"] for m in older["messages"]] == [0, 1, 2]
        newer = await c.request(
            {"type": "history", "room": "r", "limit": 2, "after": older["messages"][0]["position"]}
        )
        assert [m["n"] for m in newer["messages"]] == [1, 2]
        both = await c.request(
            {
                "type": "history",
                "room": "r",
                "before": {"offset": 1, "epoch": epoch},
                "after": {"offset": 1, "epoch": epoch},
            }
        )
        assert both["code"] == "invalid_field" and "not both" in both["message"]
        # Not a member of the room: no history.
        other = await c.request({"type": "history", "room": "elsewhere"})
        assert other["type"] == "error" and other["code"] == "not_in_room"
        bad = await c.request({"type": "history", "room": "r", "limit": 0})
        assert bad["code"] == "invalid_field" and "limit" in bad["message"]


async def test_recovery_replays_what_was_missed_in_order(make_manager: Any) -> None:
    async with history_manager(make_manager) as manager:
        async with client(manager) as c:
            joined = await c.request({"type": "join_room", "room": "r"})
            await manager.broadcast_to_room("r", {"type": "chat", "n": 0})
            last = (await c.recv())["position"]
        for i in range(1, 4):
            await manager.broadcast_to_room("r", {"type": "chat", "n": i})
        async with client(manager) as c:
            await c.send({"type": "join_room", "room": "r", "since": last, "id": 9})
            replayed = [await c.recv() for _ in range(3)]
            assert [m["n"] for m in replayed] == [1, 2, 3]
            ack = await c.recv()
            assert ack["type"] == "room_joined" and ack["recovered"] is True and ack["id"] == 9
            assert ack["position"]["offset"] == 4
            assert ack["position"]["epoch"] == joined["position"]["epoch"]
            await manager.broadcast_to_room("r", {"type": "chat", "n": 4})
            assert (await c.recv())["n"] == 4  # live again


async def test_recovery_not_possible_says_why(make_manager: Any) -> None:
    async with history_manager(make_manager, store=MemoryStreamStore(max_entries=2)) as manager:
        async with client(manager) as c:
            await c.request({"type": "join_room", "room": "r"})
            await manager.broadcast_to_room("r", {"type": "chat", "n": 0})
            last = (await c.recv())["position"]
            for i in range(1, 5):
                await manager.broadcast_to_room("r", {"type": "chat", "n": i})
        async with client(manager) as c:
            ack = await c.request({"type": "join_room", "room": "r2", "since": last})
            assert ack["recovered"] is False and ack["reason"] == "epoch_changed"
            ack = await c.request({"type": "join_room", "room": "r", "since": last})
            assert ack["recovered"] is False and ack["reason"] == "retention"
            bad = await c.request({"type": "join_room", "room": "r", "since": {"offset": "x"}})
            assert bad["type"] == "error" and "since.offset" in bad["message"]


async def test_recovery_during_a_stream_of_broadcasts_loses_and_repeats_nothing(
    make_manager: Any,
) -> None:
    class SlowStore(MemoryStreamStore):
        """Reads take a while, so live messages arrive during the replay (the buffer path)."""

        async def read(self, stream: str, epoch: str, after: int, limit: int) -> Any:
            entries = await super().read(stream, epoch, after, limit)
            await trio.sleep(0.05)  # the answer travels back while new messages are published
            return entries

    history = RoomHistory(SlowStore(), MemorySequencer())
    async with make_manager(history=history) as manager:
        async with client(manager) as c:
            await c.request({"type": "join_room", "room": "r"})
            await manager.broadcast_to_room("r", {"type": "chat", "n": 0})
            last = (await c.recv())["position"]
        total = 300
        async with trio.open_nursery() as nursery:

            async def publish() -> None:
                for i in range(1, total + 1):
                    await manager.broadcast_to_room("r", {"type": "chat", "n": i})
                    await trio.sleep(0.001)

            nursery.start_soon(publish)
            async with client(manager) as c:
                await trio.sleep(0.03)
                await c.send({"type": "join_room", "room": "r", "since": last})
                seen: list[int] = []
                acked = False
                while len(seen) < total:
                    msg = await c.recv()
                    if msg["type"] == "room_joined":
                        assert msg["recovered"] is True
                        acked = True
                        continue
                    seen.append(msg["n"])
                assert acked or (await c.recv())["type"] == "room_joined"
                assert seen == list(range(1, total + 1))


async def test_python_client_recovers_missed_messages_after_a_reconnect(make_manager: Any) -> None:
    from trio_rt.client import ClientEvent, WebSocketClient

    async with history_manager(make_manager) as manager:
        events: list[ClientEvent] = []
        async with WebSocketClient(manager.url, initial_delay=0.01, rng=None) as c:
            c.add_listener("recovery_failed", events.append)
            await c.join_room("r")
            await manager.broadcast_to_room("r", {"type": "chat", "n": 0})
            assert (await c.receive())["n"] == 0
            assert c.position("r") is not None and c.position("r")["offset"] == 1  # type: ignore[index]
            # The server drops the connection; messages are sent while the client is away.
            (conn,) = manager.connections.values()
            await conn.close(1011, "test")
            await wait_until(lambda: not manager.connections)
            for i in range(1, 4):
                await manager.broadcast_to_room("r", {"type": "chat", "n": i})
            got = [(await c.receive())["n"] for _ in range(3)]
            assert got == [1, 2, 3]
            await manager.broadcast_to_room("r", {"type": "chat", "n": 4})
            assert (await c.receive())["n"] == 4
            assert c.position("r")["offset"] == 5  # type: ignore[index]
            assert events == []


async def test_python_client_refetches_history_when_recovery_is_not_possible(
    make_manager: Any,
) -> None:
    from trio_rt.client import ClientEvent, WebSocketClient

    store = MemoryStreamStore(max_entries=2)
    async with make_manager(history=RoomHistory(store)) as manager:
        events: list[ClientEvent] = []
        async with WebSocketClient(manager.url, initial_delay=0.01) as c:
            c.add_listener("recovery_failed", events.append)
            await c.join_room("r")
            await manager.broadcast_to_room("r", {"type": "chat", "n": 0})
            assert (await c.receive())["n"] == 0
            (conn,) = manager.connections.values()
            await conn.close(1011, "test")
            await wait_until(lambda: not manager.connections)
            for i in range(1, 6):  # more than the store keeps
                await manager.broadcast_to_room("r", {"type": "chat", "n": i})
            page = await c.receive()
            assert page["type"] == "history" and [m["n"] for m in page["messages"]] == [4, 5]
            assert [(e.room, e.reason) for e in events] == [("r", "retention")]


def test_memory_history_behind_a_cross_process_broker_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class SpansProcesses:
        needs_asyncio = True

    RoomHistory().check_deployment(SpansProcesses())
    assert "positions are per process" in caplog.text
    caplog.clear()
    RoomHistory().check_deployment(object())  # MemoryBroker: one process, fine
    assert caplog.text == ""

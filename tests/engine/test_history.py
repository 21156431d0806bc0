"""Room history, positions and recovery over real sockets, with the in-memory backends."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import trio

from trio_rt import WebSocketManager
from trio_rt._core.envelope import Envelope, encode_envelope
from trio_rt._core.protocol import encode
from trio_rt._engine.history import RoomHistory
from trio_rt._engine.streams import MemorySequencer, MemoryStreamStore, StreamPosition

from ..conftest import client, two_servers, wait_until


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
        spans_processes = True

    RoomHistory().check_deployment(SpansProcesses())
    assert "positions are per process" in caplog.text
    caplog.clear()
    RoomHistory().check_deployment(object())  # MemoryBroker: one process, fine
    assert caplog.text == ""


# -- offset order on every server (ReorderBuffer in the manager) --------------------------------
async def inject(manager: WebSocketManager, room: str, position: StreamPosition, n: int) -> None:
    """Publish a positioned room message through the manager's broker, as another server
    would: the seam where envelopes can arrive out of offset order."""
    payload = encode({"type": "chat", "n": n, "room": room, "position": position.to_json()})
    env = Envelope(payload, rooms=(room,), offset=position.offset, epoch=position.epoch)
    await manager.broker.publish(manager._channels.room(room), encode_envelope(env))


async def test_messages_published_out_of_offset_order_are_delivered_in_order(
    make_manager: Any,
) -> None:
    history = RoomHistory(reorder_window=30.0)  # long: only the missing offset releases them
    async with make_manager(history=history) as manager, client(manager) as c:
        await c.request({"type": "join_room", "room": "r"})
        first = await manager.broadcast_to_room("r", {"type": "chat", "n": 1})
        assert first is not None and (await c.recv())["n"] == 1
        epoch = first.epoch
        await inject(manager, "r", StreamPosition(3, epoch), 3)
        await inject(manager, "r", StreamPosition(4, epoch), 4)
        assert manager._delivery.order.buffers["r"].holding  # 3 and 4 wait for 2
        await inject(manager, "r", StreamPosition(2, epoch), 2)
        assert [(await c.recv())["n"] for _ in range(3)] == [2, 3, 4]
        assert manager.stats.reorder_skipped == 0 and manager.stats.reorder_late == 0


async def test_a_hole_is_skipped_after_the_reorder_window_and_a_late_message_still_arrives(
    make_manager: Any,
) -> None:
    history = RoomHistory(reorder_window=0.05)
    async with make_manager(history=history) as manager, client(manager) as c:
        await c.request({"type": "join_room", "room": "r"})
        first = await manager.broadcast_to_room("r", {"type": "chat", "n": 1})
        assert first is not None and (await c.recv())["n"] == 1
        await inject(manager, "r", StreamPosition(3, first.epoch), 3)
        assert (await c.recv())["n"] == 3  # released by the deadline task, not by 2
        assert manager.stats.reorder_skipped == 1
        await inject(manager, "r", StreamPosition(2, first.epoch), 2)
        assert (await c.recv())["n"] == 2  # late: at once
        assert manager.stats.reorder_late == 1 and not manager._delivery.order.timers


async def test_a_room_whose_members_left_drops_its_reorder_buffer(make_manager: Any) -> None:
    history = RoomHistory(reorder_window=30.0)
    async with make_manager(history=history) as manager:
        async with client(manager) as c:
            await c.request({"type": "join_room", "room": "r"})
            first = await manager.broadcast_to_room("r", {"type": "chat", "n": 1})
            assert first is not None and (await c.recv())["n"] == 1
            await inject(manager, "r", StreamPosition(3, first.epoch), 3)
            assert manager._delivery.order.buffers["r"].holding and manager._delivery.order.timers
            await c.request({"type": "leave_room", "room": "r"})
            assert manager._delivery.order.buffers == {} and not manager._delivery.order.timers
            joined = await c.request({"type": "join_room", "room": "r"})
            assert joined["position"]["offset"] == 1
            await inject(manager, "r", StreamPosition(2, first.epoch), 2)
            assert (await c.recv())["n"] == 2  # a new buffer, started at the join's position
        await wait_until(lambda: not manager.connections)
        assert manager._delivery.order.buffers == {} and not manager._delivery.order.timers


async def test_recovery_while_the_buffer_holds_messages_repeats_nothing(make_manager: Any) -> None:
    history = RoomHistory(reorder_window=30.0)
    stream = history.stream("r")

    async def allocate_and_store(n: int, *, store: bool = True) -> Any:
        allocation = await history.sequencer.next(stream)
        if store:
            await store_entry(allocation, n)
        return allocation

    async def store_entry(allocation: Any, n: int) -> None:
        message = {"type": "chat", "n": n, "room": "r", "position": allocation.position.to_json()}
        await history.store.append(stream, allocation, encode(message).decode())

    async with make_manager(history=history) as manager, client(manager) as a:
        await a.request({"type": "join_room", "room": "r"})
        one = await allocate_and_store(1)
        two = await allocate_and_store(2, store=False)  # allocated, its write is slow
        three = await allocate_and_store(3)
        await inject(manager, "r", one.position, 1)
        await inject(manager, "r", three.position, 3)
        assert (await a.recv())["n"] == 1 and manager._delivery.order.buffers["r"].is_held(3)
        async with client(manager) as b:
            since = one.position.to_json()
            await b.send({"type": "join_room", "room": "r", "since": since})
            # The replay read 3 (2 is not there yet): it waits for 2, as the room's order does.
            ack = await b.recv()
            assert ack["recovered"] is True and ack["position"]["offset"] == 1
            await store_entry(two, 2)
            await inject(manager, "r", two.position, 2)
            assert [(await a.recv())["n"] for _ in range(2)] == [2, 3]
            assert [(await b.recv())["n"] for _ in range(2)] == [2, 3]  # 3 once:
            await manager.broadcast_to_room("r", {"type": "chat", "n": 4})
            assert (await b.recv())["n"] == 4 and (await a.recv())["n"] == 4
            assert manager._delivery.order.replayed == {}


async def test_two_servers_on_redis_deliver_concurrent_publishes_in_offset_order(
    redis_url: str,
) -> None:
    """Server 1 allocates offset 2 and is slow to store it; server 2 allocates 3 and
    publishes it first. Both servers' members still get 2 then 3."""
    from trio_rt import RedisBroker
    from trio_rt.redis import RedisSequencer

    class GatedStore(MemoryStreamStore):
        """Holds the append of the message with ``"slow": true`` until `gate` is set."""

        def __init__(self) -> None:
            super().__init__()
            self.gate = trio.Event()
            self.entered = trio.Event()

        async def append(self, stream: str, allocation: Any, payload: str) -> None:
            if '"slow":true' in payload:
                self.entered.set()
                await self.gate.wait()
            await super().append(stream, allocation, payload)

    store = GatedStore()
    namespace = "order-" + uuid.uuid4().hex[:8]
    managers = [
        WebSocketManager(
            host="127.0.0.1",
            port=0,
            heartbeat_interval=None,
            broker=RedisBroker(redis_url),
            history=RoomHistory(
                store, RedisSequencer(redis_url, namespace=namespace), reorder_window=30.0
            ),
        )
        for _ in range(2)
    ]
    m1, m2 = managers
    async with two_servers(m1, m2) as (a, b), trio.open_nursery() as nursery:
        await a.request({"type": "join_room", "room": "r"})
        await b.request({"type": "join_room", "room": "r"})
        # Both servers subscribed: retry until a message crosses (subscriptions are async).
        n = 0
        while True:
            n += 1
            await m1.broadcast_to_room("r", {"type": "chat", "n": n})
            assert (await a.recv())["n"] == n
            with trio.move_on_after(0.5):
                while (await b.recv())["n"] != n:
                    pass
                break
        nursery.start_soon(m1.broadcast_to_room, "r", {"type": "chat", "n": "slow", "slow": True})
        await store.entered.wait()  # its offset is allocated; it is not published yet
        await m2.broadcast_to_room("r", {"type": "chat", "n": "fast"})
        await wait_until(lambda: all(m._delivery.order.buffers["r"].holding for m in managers))
        store.gate.set()
        for c in (a, b):
            got = [await c.recv() for _ in range(2)]
            assert [m["n"] for m in got] == ["slow", "fast"]
            assert got[1]["position"]["offset"] == got[0]["position"]["offset"] + 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reorder_window": -0.1},
        {"reorder_window": float("inf")},
        {"reorder_window": "0.2"},
        {"reorder_window": True},
        {"reorder_limit": 0},
        {"reorder_limit": 1.5},
    ],
)
def test_reorder_options_are_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RoomHistory(**kwargs)
    assert RoomHistory(reorder_window=0).reorder_window == 0.0  # 0: arrival order


async def test_python_client_drops_duplicates_and_delivers_late_messages(
    make_manager: Any,
) -> None:
    from trio_rt.client import WebSocketClient

    history = RoomHistory(reorder_window=0.05)
    async with (
        make_manager(history=history) as manager,
        WebSocketClient(manager.url, initial_delay=0.01, rng=None) as c,
    ):
        await c.join_room("r")
        first = await manager.broadcast_to_room("r", {"type": "chat", "n": 1})
        assert first is not None and (await c.receive())["n"] == 1
        await inject(manager, "r", StreamPosition(3, first.epoch), 3)  # 2 is missing
        assert (await c.receive())["n"] == 3  # after the reorder window
        await inject(manager, "r", StreamPosition(2, first.epoch), 2)
        assert (await c.receive())["n"] == 2  # late but never seen: delivered
        (conn,) = manager.connections.values()
        # A duplicate, as when a replay overlaps live delivery:
        position = {"offset": 3, "epoch": first.epoch}
        await conn.send({"type": "chat", "n": 3, "room": "r", "position": position})
        await inject(manager, "r", StreamPosition(4, first.epoch), 4)
        assert (await c.receive())["n"] == 4  # the duplicate never reached the app
        assert c.stats.duplicates == 1
        assert c.position("r") == {"offset": 4, "epoch": first.epoch}


def test_seen_offsets_remember_a_bounded_window(monkeypatch: pytest.MonkeyPatch) -> None:
    from trio_rt.client import _positions

    monkeypatch.setattr(_positions, "RECENT_OFFSETS", 4)
    seen = _positions.SeenOffsets("e", floor=9)
    assert not seen.add(9)  # at or below the floor (the room_joined position): seen
    assert all(seen.add(o) for o in (10, 11, 12, 13))
    assert seen.add(15) and seen.floor == 10  # 10 forgotten: it becomes the floor
    assert not seen.add(10) and not seen.add(11)  # forgotten / still remembered
    assert seen.add(14)  # late, never seen
    assert not seen.add(14)


async def test_python_client_forgets_a_room_it_left(make_manager: Any) -> None:
    from trio_rt.client import WebSocketClient

    async with (
        history_manager(make_manager) as manager,
        WebSocketClient(manager.url, initial_delay=0.01, rng=None) as c,
    ):
        await c.join_room("r")
        await manager.broadcast_to_room("r", {"type": "chat", "n": 1})
        assert (await c.receive())["n"] == 1 and c.position("r") is not None
        await c.leave_room("r")
        assert c.position("r") is None
        await manager.broadcast_to_room("r", {"type": "chat", "n": 2})  # said while away
        await c.join_room("r")  # afresh: no `since`, so nothing is replayed
        await manager.broadcast_to_room("r", {"type": "chat", "n": 3})
        assert (await c.receive())["n"] == 3
        assert c.position("r")["offset"] == 3  # type: ignore[index]

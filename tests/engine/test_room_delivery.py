"""Room delivery that survives faults (issue 12), server side: one manager at a time, with the
in-memory backends and injected envelopes (the seams where faults show up). The fault runs
against real Redis and Cassandra are in tests/engine/test_room_faults.py."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

from trio_rt import BrokerUnavailable, MemoryBroker, RoomHistory, WebSocketManager
from trio_rt._core.envelope import Envelope, encode_envelope
from trio_rt._core.protocol import encode
from trio_rt._engine.streams import (
    Allocation,
    MemorySequencer,
    MemoryStreamStore,
    StreamEntry,
    StreamPosition,
    recover,
)

from ..conftest import Client, client, wait_until


async def inject(manager: WebSocketManager, room: str, position: StreamPosition, n: Any) -> None:
    """Publish a positioned room message through the manager's broker, as another server
    would (without storing it)."""
    payload = encode({"type": "chat", "n": n, "room": room, "position": position.to_json()})
    env = Envelope(payload, rooms=(room,), offset=position.offset, epoch=position.epoch)
    await manager.broker.publish(manager._channels.room(room), encode_envelope(env))


async def store_only(history: RoomHistory, room: str, n: Any) -> Allocation:
    """Allocate and store a message without publishing it (its publish was lost)."""
    stream = history.stream(room)
    allocation = await history.sequencer.next(stream)
    message = {"type": "chat", "n": n, "room": room, "position": allocation.position.to_json()}
    await history.store.append(stream, allocation, encode(message).decode())
    return allocation


async def received(c: Client, count: int) -> list[Any]:
    """The `n` of the next `count` chat messages (other types are kept out)."""
    out: list[Any] = []
    while len(out) < count:
        msg = await c.recv()
        if msg["type"] == "chat":
            out.append(msg["n"])
    return out


async def rejoined(c: Client, since: Any) -> tuple[list[Any], dict[str, Any]]:
    """Rejoin room r from `since`: the `n` of the chat messages before the `room_joined`
    reply, and the reply."""
    await c.send({"type": "join_room", "room": "r", "since": since})
    got: list[Any] = []
    while (msg := await c.recv())["type"] != "room_joined":
        if msg["type"] == "chat":
            got.append(msg["n"])
    return got, msg


async def quiet(c: Client) -> None:
    """Nothing else was queued for `c` (a ping's answer comes next)."""
    assert await c.request({"type": "ping"}) == {"type": "pong"}


class CountingStore(MemoryStreamStore):
    """Counts reads; `fail` makes them raise (the store is unreachable)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reads = 0
        self.fail = False

    async def read(
        self, stream: str, epoch: str, after: int, limit: int, *, upto: int | None = None
    ) -> list[StreamEntry]:
        self.reads += 1
        if self.fail:
            await trio.lowlevel.checkpoint()
            raise ConnectionError("store unreachable")
        return await super().read(stream, epoch, after, limit, upto=upto)


# -- 1. a refused publish reaches the sender ------------------------------------------------------
class DownBroker(MemoryBroker):
    """A broker whose publishes cannot reach the other servers (local delivery still works)."""

    async def publish(self, channel: str, data: bytes) -> None:
        if channel in self._channels:
            self._receive(channel, data)
        await trio.lowlevel.checkpoint()
        raise BrokerUnavailable("down")


async def test_a_refused_publish_raises_to_the_sender_and_the_message_was_stored(
    make_manager: Any,
) -> None:
    history = RoomHistory()
    manager = make_manager(history=history, broker=DownBroker())
    got: list[dict[str, Any]] = []

    @manager.on_message("say")
    async def say(conn: Any, message: dict[str, Any]) -> None:
        await manager.broadcast_to_room("r", {"type": "chat", "n": message["n"]})

    async with manager, client(manager) as c:
        await c.request({"type": "join_room", "room": "r"})
        await c.send({"type": "say", "n": 1, "id": 7})
        while len(got) < 2:
            got.append(await c.recv())
        # The local member got it (immediate), and the sender was told it was refused.
        assert {m["type"] for m in got} == {"chat", "error"}
        error = next(m for m in got if m["type"] == "error")
        assert error["id"] == 7 and error["code"] == "internal_error"
        page = await c.request({"type": "history", "room": "r"})
        assert [m["n"] for m in page["messages"]] == [1]  # refused, but stored


# -- 2a. a broker break is followed by a re-read of the store ------------------------------------
async def test_after_a_broker_break_members_get_what_was_published_meanwhile(
    make_manager: Any,
) -> None:
    history = RoomHistory()
    async with make_manager(history=history) as manager, client(manager) as a:
        await a.request({"type": "join_room", "room": "r"})
        await manager.broadcast_to_room("r", {"type": "chat", "n": 1})
        assert await received(a, 1) == [1]
        # Published by another server while this one's subscription was broken:
        for n in (2, 3, 4):
            await store_only(history, "r", n)
        await quiet(a)  # nothing arrives by itself
        manager.broker._resubscribed()  # the broker is subscribed again
        assert await received(a, 3) == [2, 3, 4]
        await manager.broadcast_to_room("r", {"type": "chat", "n": 5})
        assert await received(a, 1) == [5]
        await quiet(a)
        assert manager.stats.reorder_healed == 3


async def test_after_a_long_break_members_are_told_too_many_were_missed(
    make_manager: Any,
) -> None:
    history = RoomHistory(recovery_limit=3)
    async with make_manager(history=history) as manager, client(manager) as a:
        joined = await a.request({"type": "join_room", "room": "r"})
        epoch = joined["position"]["epoch"]
        for n in range(1, 6):
            await store_only(history, "r", n)
        manager.broker._resubscribed()
        gap = await a.recv()
        assert gap == {
            "type": "room_gap",
            "room": "r",
            "after": {"offset": 0, "epoch": epoch},
            "before": {"offset": 6, "epoch": epoch},
            "reason": "too_many",
        }
        await manager.broadcast_to_room("r", {"type": "chat", "n": 6})
        assert await received(a, 1) == [6]  # and the order goes on


# -- 2b. holes are healed from the store ----------------------------------------------------------
async def test_a_hole_is_filled_from_the_store_in_order(make_manager: Any) -> None:
    history = RoomHistory(reorder_window=0.05)
    async with make_manager(history=history) as manager, client(manager) as a:
        await a.request({"type": "join_room", "room": "r"})
        await manager.broadcast_to_room("r", {"type": "chat", "n": 1})
        lost = await store_only(history, "r", 2)  # stored; its publish never arrives
        await manager.broadcast_to_room("r", {"type": "chat", "n": 3})
        assert await received(a, 3) == [1, 2, 3]
        assert manager.stats.reorder_healed == 1 and manager.stats.reorder_skipped == 0
        await inject(manager, "r", lost.position, 2)  # its publish, late after all: dropped
        await manager.broadcast_to_room("r", {"type": "chat", "n": 4})
        assert await received(a, 1) == [4]
        assert manager.stats.reorder_duplicates == 2  # 3 (read with 2), then 2 again


async def test_offsets_never_written_are_skipped_as_one_range_with_one_read(
    make_manager: Any,
) -> None:
    store = CountingStore()
    # write_timeout at most reorder_window: one read decides (the default reads again until
    # write_timeout, see test_a_slow_store_write_is_read_again_and_delivered_in_order)
    history = RoomHistory(store, reorder_window=0.05, write_timeout=0.05)
    async with make_manager(history=history) as manager, client(manager) as a:
        await a.request({"type": "join_room", "room": "r"})
        first = await manager.broadcast_to_room("r", {"type": "chat", "n": 1})
        assert first is not None
        reads = store.reads
        # A reseed gap: 1,000 offsets allocated by a lost sequencer state, never written.
        await inject(manager, "r", StreamPosition(1002, first.epoch), 1002)
        assert await received(a, 2) == [1, 1002]
        assert store.reads == reads + 1 and manager.stats.reorder_skipped == 1000
        await quiet(a)


async def test_a_hole_the_store_cannot_read_is_skipped_and_members_are_told(
    make_manager: Any,
) -> None:
    store = CountingStore()
    history = RoomHistory(store, reorder_window=0.05, heal_timeout=0.2)
    async with make_manager(history=history) as manager, client(manager) as a:
        joined = await a.request({"type": "join_room", "room": "r"})
        epoch = joined["position"]["epoch"]
        await manager.broadcast_to_room("r", {"type": "chat", "n": 1})
        assert await received(a, 1) == [1]
        store.fail = True
        await inject(manager, "r", StreamPosition(4, epoch), 4)
        got = [await a.recv() for _ in range(2)]
        assert got[0] == {
            "type": "room_gap",
            "room": "r",
            "after": {"offset": 1, "epoch": epoch},
            "before": {"offset": 4, "epoch": epoch},
            "reason": "unavailable",
        }
        assert got[1]["n"] == 4
        assert store.reads >= 2  # retried before giving up
        assert manager.stats.room_gaps == 1 and manager.stats.reorder_skipped == 2


# -- 3. nothing twice ---------------------------------------------------------------------------
async def test_a_republished_offset_reaches_a_member_once(make_manager: Any) -> None:
    history = RoomHistory(reorder_window=30.0)
    async with make_manager(history=history) as manager, client(manager) as a:
        await a.request({"type": "join_room", "room": "r"})
        first = await manager.broadcast_to_room("r", {"type": "chat", "n": 1})
        assert first is not None
        await inject(manager, "r", first, 1)  # the same offset again (a re-sent publish)
        await inject(manager, "r", StreamPosition(3, first.epoch), 3)
        await inject(manager, "r", StreamPosition(3, first.epoch), 3)  # held: twice
        await inject(manager, "r", StreamPosition(2, first.epoch), 2)
        assert await received(a, 3) == [1, 2, 3]
        await quiet(a)
        assert manager.stats.reorder_duplicates == 2


# -- 4. the join path keeps what it did not replay ---------------------------------------------
async def test_a_live_message_still_being_written_during_the_replay_is_not_dropped(
    make_manager: Any,
) -> None:
    """B recovers from 1. The store read sees 2 and 4; 3 is still being written, and is
    published while the read runs: B gets it too, in its place (the replayed 4 waits for it)."""

    class Store(MemoryStreamStore):
        def __init__(self) -> None:
            super().__init__()
            self.entered = trio.Event()
            self.gate = trio.Event()
            self.reading = trio.Event()
            self.read_done = trio.Event()

        async def append(self, stream: str, allocation: Allocation, payload: str) -> None:
            if '"slow":true' in payload:
                self.entered.set()
                await self.gate.wait()
            await super().append(stream, allocation, payload)

        async def read(
            self, stream: str, epoch: str, after: int, limit: int, *, upto: int | None = None
        ) -> list[StreamEntry]:
            entries = await super().read(stream, epoch, after, limit, upto=upto)
            if self.gate.is_set():
                return entries
            self.reading.set()
            await self.read_done.wait()  # the slow write lands and is published meanwhile
            return entries

    store = Store()
    history = RoomHistory(store, reorder_window=30.0)
    async with (
        make_manager(history=history) as manager,
        client(manager) as a,
        client(manager) as b,
        trio.open_nursery() as nursery,
    ):
        await a.request({"type": "join_room", "room": "r"})
        one = await manager.broadcast_to_room("r", {"type": "chat", "n": 1})
        assert one is not None
        await manager.broadcast_to_room("r", {"type": "chat", "n": 2})
        sent = trio.Event()

        async def slow() -> None:
            await manager.broadcast_to_room("r", {"type": "chat", "n": 3, "slow": True})
            sent.set()

        nursery.start_soon(slow)
        await store.entered.wait()  # 3 is allocated, its write is slow
        await manager.broadcast_to_room("r", {"type": "chat", "n": 4})  # held behind 3
        await b.send({"type": "join_room", "room": "r", "since": one.to_json()})
        await store.reading.wait()
        store.gate.set()  # 3 is stored and published while B's read is under way
        await sent.wait()
        store.read_done.set()
        assert await received(b, 3) == [2, 3, 4]  # replayed 2 and 4, live 3, merged in order
        ack = await b.recv()
        assert ack["type"] == "room_joined" and ack["recovered"] is True
        assert ack["position"]["offset"] == 4
        await quiet(b)
        assert await received(a, 4) == [1, 2, 3, 4]


# -- 5. recovery from a position that was never written -------------------------------------------
async def test_recovery_from_a_position_never_written_is_not_retention() -> None:
    store = MemoryStreamStore()
    seq = MemorySequencer()
    seq.attach(store)
    for _ in range(2):
        await store.append("s", await seq.next("s"), "{}")
    failed = await seq.next("s")  # allocated; its write failed: never stored
    since = await seq.current("s")  # what room_joined handed out
    assert since == failed.position
    for _ in range(2):
        await store.append("s", await seq.next("s"), "{}")
    current = await seq.current("s")
    ok = await recover(store, "s", since, current, limit=10)
    assert ok.recovered and [e.position.offset for e in ok.entries] == [4, 5]
    # Nothing at or below `since` any more, and `since + 1` missing: may have expired.
    small = MemoryStreamStore(max_entries=1)
    now = time.time_ns() // 1000
    for offset in (1, 2, 5):
        position = StreamPosition(offset, current.epoch)
        await small.append("s", Allocation(position, now + offset), "{}")
    gone = await recover(small, "s", StreamPosition(3, current.epoch), current, limit=10)
    assert gone.reason == "retention"
    fresh = await recover(small, "s", StreamPosition(4, current.epoch), current, limit=10)
    assert fresh.recovered  # 5 = since + 1 is there: nothing after it can have expired


async def test_rejoining_at_a_room_joined_position_whose_write_failed_recovers(
    make_manager: Any,
) -> None:
    class FlakyStore(MemoryStreamStore):
        fail = False

        async def append(self, stream: str, allocation: Allocation, payload: str) -> None:
            if self.fail:
                raise ConnectionError("write failed")
            await super().append(stream, allocation, payload)

    store = FlakyStore()
    history = RoomHistory(store, reorder_window=0.05)
    async with make_manager(history=history) as manager:
        await manager.broadcast_to_room("r", {"type": "chat", "n": 1})
        store.fail = True
        with pytest.raises(ConnectionError):
            await manager.broadcast_to_room("r", {"type": "chat", "n": "refused"})
        store.fail = False
        async with client(manager) as c:
            joined = await c.request({"type": "join_room", "room": "r"})
            since = joined["position"]
            assert since["offset"] == 2  # the failed allocation
        await manager.broadcast_to_room("r", {"type": "chat", "n": 3})
        async with client(manager) as c:
            await c.send({"type": "join_room", "room": "r", "since": since})
            assert await received(c, 1) == [3]
            ack = await c.recv()
            assert ack["recovered"] is True and "reason" not in ack


# -- 6. a room's order starts at its first member's position ---------------------------------------
async def test_members_never_see_offsets_go_backwards_at_the_start_of_a_room(
    make_manager: Any,
) -> None:
    history = RoomHistory(reorder_window=30.0)
    async with make_manager(history=history) as manager:
        stream = history.stream("r")
        for _ in range(3):  # 1..3 were said before anyone here joined
            await history.sequencer.next(stream)
        late = await history.sequencer.next(stream)  # 4: allocated before the join...
        async with client(manager) as a:
            joined = await a.request({"type": "join_room", "room": "r"})
            assert joined["position"]["offset"] == 4
            five = await history.sequencer.next(stream)
            six = await history.sequencer.next(stream)
            await inject(manager, "r", six.position, 6)  # the first message came second
            await inject(manager, "r", late.position, 4)  # ...published after it: the past
            await inject(manager, "r", five.position, 5)
            assert await received(a, 2) == [5, 6]
            await quiet(a)


async def test_a_member_joining_a_busy_room_gets_nothing_from_before_its_position(
    make_manager: Any,
) -> None:
    history = RoomHistory(reorder_window=30.0)
    async with make_manager(history=history) as manager, client(manager) as a:
        await a.request({"type": "join_room", "room": "r"})
        one = await manager.broadcast_to_room("r", {"type": "chat", "n": 1})
        assert one is not None and await received(a, 1) == [1]
        await inject(manager, "r", StreamPosition(3, one.epoch), 3)  # 2 is slow: 3 is held
        await history.sequencer.next(history.stream("r"))
        await history.sequencer.next(history.stream("r"))  # (2 and 3 were allocated)
        async with client(manager) as b:
            joined = await b.request({"type": "join_room", "room": "r"})
            assert joined["position"]["offset"] == 3
            await inject(manager, "r", StreamPosition(2, one.epoch), 2)
            assert await received(a, 2) == [2, 3]
            await manager.broadcast_to_room("r", {"type": "chat", "n": 4})
            assert await received(a, 1) == [4]
            assert await received(b, 1) == [4]  # not 2 and 3: from before it joined
            await quiet(b)


@pytest.mark.parametrize("kwargs", [{"heal_timeout": 0}, {"heal_timeout": float("nan")}])
def test_heal_timeout_is_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RoomHistory(**kwargs)


# -- recovery on top of the room's order -------------------------------------------------------
async def test_a_replayed_message_whose_publish_arrives_later_is_not_sent_again(
    make_manager: Any,
) -> None:
    history = RoomHistory(reorder_window=30.0)
    async with make_manager(history=history) as manager, client(manager) as a:
        joined = await a.request({"type": "join_room", "room": "r"})
        one = await store_only(history, "r", 1)  # stored; its publish is on its way
        async with client(manager) as b:
            await b.send({"type": "join_room", "room": "r", "since": joined["position"]})
            assert await received(b, 1) == [1]  # replayed from the store
            assert (await b.recv())["recovered"] is True
            await inject(manager, "r", one.position, 1)  # the publish lands
            assert await received(a, 1) == [1]
            await manager.broadcast_to_room("r", {"type": "chat", "n": 2})
            assert await received(b, 1) == [2]  # and not 1 again
            assert await received(a, 1) == [2]
            assert manager._delivery.order.replayed == {}


async def test_a_recovery_reaching_before_the_rooms_start_gets_a_write_still_in_flight(
    make_manager: Any,
) -> None:
    """1 is stored. 2 is allocated and still being written when A joins (the room's order
    starts at 2: A is past it) and when B recovers from 1 (its read does not see 2). When 2
    lands B gets it (late); A does not (it joined after it)."""

    class Store(MemoryStreamStore):
        def __init__(self) -> None:
            super().__init__()
            self.entered = trio.Event()
            self.gate = trio.Event()

        async def append(self, stream: str, allocation: Allocation, payload: str) -> None:
            if '"slow":true' in payload:
                self.entered.set()
                await self.gate.wait()
            await super().append(stream, allocation, payload)

    store = Store()
    history = RoomHistory(store, reorder_window=30.0)
    async with make_manager(history=history) as manager, trio.open_nursery() as nursery:
        one = await manager.broadcast_to_room("r", {"type": "chat", "n": 1})
        assert one is not None
        nursery.start_soon(manager.broadcast_to_room, "r", {"type": "chat", "n": 2, "slow": True})
        await store.entered.wait()
        async with client(manager) as a, client(manager) as b:
            joined = await a.request({"type": "join_room", "room": "r"})
            assert joined["position"]["offset"] == 2
            await b.send({"type": "join_room", "room": "r", "since": one.to_json()})
            ack = await b.recv()
            # Everything up to 1 went out; 2 is still to come (its write is in flight).
            assert ack["recovered"] is True and ack["position"]["offset"] == 1
            store.gate.set()
            assert await received(b, 1) == [2]
            await manager.broadcast_to_room("r", {"type": "chat", "n": 3})
            assert await received(b, 1) == [3]
            assert await received(a, 1) == [3]
            await quiet(a)
            await quiet(b)


# -- a recovering member: replay and live merged in offset order (the recovery gate) -------------
class HeldStore(CountingStore):
    """A store whose append of a message marked ``"slow": true`` waits for `release` (its
    write is in flight); reads given `upto` (the heal reads, not a recovery's) fail while
    `fail_heals` is set."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entered = trio.Event()
        self.release = trio.Event()
        self.fail_heals = False

    async def append(self, stream: str, allocation: Allocation, payload: str) -> None:
        if '"slow":true' in payload:
            self.entered.set()
            await self.release.wait()
        await super().append(stream, allocation, payload)

    async def read(
        self, stream: str, epoch: str, after: int, limit: int, *, upto: int | None = None
    ) -> list[StreamEntry]:
        if self.fail_heals and upto is not None:
            self.reads += 1
            await trio.lowlevel.checkpoint()
            raise ConnectionError("store unreachable")
        return await super().read(stream, epoch, after, limit, upto=upto)


async def test_a_write_in_flight_that_the_room_skipped_reaches_a_recovering_member_in_order(
    make_manager: Any,
) -> None:
    """The fault suite's SIGTERM finding (r22 got 125, then 124). 2 is being written; 3 and 4
    are stored and published, and this server's order already passed 2 (skipped: a greater
    offset could not wait). B recovers from 1 meanwhile: its replay reads 3 and 4, not 2.
    When 2 lands, B gets 2, 3, 4 in order, each once (A, connected all along, gets 2 late)."""
    store = HeldStore()
    history = RoomHistory(store, reorder_window=30.0, reorder_limit=1)
    async with (
        make_manager(history=history) as manager,
        client(manager) as a,
        client(manager) as b,
        trio.open_nursery() as nursery,
    ):
        await a.request({"type": "join_room", "room": "r"})
        one = await manager.broadcast_to_room("r", {"type": "chat", "n": 1})
        assert one is not None and await received(a, 1) == [1]
        nursery.start_soon(manager.broadcast_to_room, "r", {"type": "chat", "n": 2, "slow": True})
        await store.entered.wait()  # 2 is allocated; its write is held
        await manager.broadcast_to_room("r", {"type": "chat", "n": 3})
        await manager.broadcast_to_room("r", {"type": "chat", "n": 4})
        assert await received(a, 2) == [3, 4]  # two held > reorder_limit: 2 was skipped
        got, ack = await rejoined(b, one.to_json())  # the replay read 3 and 4, not 2
        assert ack["recovered"] is True
        store.release.set()  # 2 lands
        got += await received(b, 3 - len(got))
        assert got == [2, 3, 4]
        assert ack["position"]["offset"] == 1  # 3 and 4 waited for 2
        assert await received(a, 1) == [2]  # late, for the member that was there
        await manager.broadcast_to_room("r", {"type": "chat", "n": 5})
        assert await received(b, 1) == [5]
        await quiet(b)
        assert manager._delivery.order.gates == {} and manager._delivery.order.replayed == {}


async def test_a_room_started_by_the_recovering_join_keeps_its_write_in_flight_in_order(
    make_manager: Any,
) -> None:
    """Nobody is in the room on this server. 2 is being written, 3 is stored. B recovers from
    1: the room's order starts with this join (at 3, the sequencer's position), the replay
    reads 3 only. When 2 lands B gets 2 then 3."""
    store = HeldStore()
    history = RoomHistory(store, reorder_window=30.0)
    async with (
        make_manager(history=history) as manager,
        client(manager) as b,
        trio.open_nursery() as nursery,
    ):
        one = await manager.broadcast_to_room("r", {"type": "chat", "n": 1})
        assert one is not None
        nursery.start_soon(manager.broadcast_to_room, "r", {"type": "chat", "n": 2, "slow": True})
        await store.entered.wait()
        await manager.broadcast_to_room("r", {"type": "chat", "n": 3})
        got, ack = await rejoined(b, one.to_json())  # the replay read 3, not 2
        assert ack["recovered"] is True
        store.release.set()  # 2 lands
        got += await received(b, 2 - len(got))
        assert got == [2, 3]
        assert ack["position"]["offset"] == 1
        await manager.broadcast_to_room("r", {"type": "chat", "n": 4})
        assert await received(b, 1) == [4]
        await quiet(b)


async def test_a_hole_in_the_replay_that_is_never_written_is_read_and_skipped(
    make_manager: Any,
) -> None:
    """2 was allocated and its write failed (never stored). A recovering member's replay has
    3 but not 2: after the reorder window the gate reads the store for 2, finds nothing and
    goes on (one bounded wait, no notice: nothing was lost)."""
    store = HeldStore()
    history = RoomHistory(store, reorder_window=0.01)
    async with make_manager(history=history) as manager, client(manager) as b:
        one = await manager.broadcast_to_room("r", {"type": "chat", "n": 1})
        assert one is not None
        await history.sequencer.next(history.stream("r"))  # 2: its write failed
        await store_only(history, "r", 3)
        reads = store.reads
        await b.send({"type": "join_room", "room": "r", "since": one.to_json()})
        got = [await b.recv() for _ in range(2)]
        assert got[0]["type"] == "room_joined" and got[0]["recovered"] is True
        assert got[1]["n"] == 3
        assert store.reads > reads + 1  # the replay, then the gate's read of 2
        await manager.broadcast_to_room("r", {"type": "chat", "n": 4})
        assert await received(b, 1) == [4]
        await quiet(b)
        assert manager._delivery.order.gates == {}


async def test_a_hole_in_the_replay_the_store_cannot_read_is_told_to_that_member_only(
    make_manager: Any,
) -> None:
    store = HeldStore()
    history = RoomHistory(store, reorder_window=0.01, heal_timeout=0.05)
    async with make_manager(history=history) as manager, client(manager) as a:
        one = await manager.broadcast_to_room("r", {"type": "chat", "n": 1})
        assert one is not None
        await history.sequencer.next(history.stream("r"))  # 2: in flight, or failed
        joined = await a.request({"type": "join_room", "room": "r"})
        assert joined["position"]["offset"] == 2
        await manager.broadcast_to_room("r", {"type": "chat", "n": 3})
        assert await received(a, 1) == [3]
        store.fail_heals = True
        async with client(manager) as b:
            await b.send({"type": "join_room", "room": "r", "since": one.to_json()})
            ack = await b.recv()
            assert ack["type"] == "room_joined" and ack["recovered"] is True
            gap = await b.recv()
            assert gap["type"] == "room_gap" and gap["reason"] == "unavailable"
            assert gap["after"]["offset"] == 1 and gap["before"]["offset"] == 3
            assert await received(b, 1) == [3]
            store.fail_heals = False
            await manager.broadcast_to_room("r", {"type": "chat", "n": 4})
            assert await received(b, 1) == [4]
            assert await received(a, 1) == [4]  # no notice for A: it missed nothing
            await quiet(a)


async def test_a_new_epoch_during_the_replay_ends_the_recovery(make_manager: Any) -> None:
    class Store(MemoryStreamStore):
        def __init__(self) -> None:
            super().__init__()
            self.reading = trio.Event()
            self.proceed = trio.Event()

        async def read(
            self, stream: str, epoch: str, after: int, limit: int, *, upto: int | None = None
        ) -> list[StreamEntry]:
            entries = await super().read(stream, epoch, after, limit, upto=upto)
            self.reading.set()
            await self.proceed.wait()
            return entries

    store = Store()
    history = RoomHistory(store, reorder_window=30.0)
    async with make_manager(history=history) as manager, client(manager) as a:
        await a.request({"type": "join_room", "room": "r"})
        one = await manager.broadcast_to_room("r", {"type": "chat", "n": 1})
        assert one is not None and await received(a, 1) == [1]
        await store_only(history, "r", 2)
        async with client(manager) as b:
            await b.send({"type": "join_room", "room": "r", "since": one.to_json()})
            await store.reading.wait()  # the replay read 2; a new epoch begins meanwhile
            await inject(manager, "r", StreamPosition(1, "new"), "new")
            assert await received(b, 1) == ["new"]  # the gate ended: live at once
            store.proceed.set()
            ack = await b.recv()
            assert ack["type"] == "room_joined" and ack["recovered"] is False
            assert ack["reason"] == "epoch_changed"
            assert manager._delivery.order.gates == {}


async def test_a_slow_store_write_is_read_again_and_delivered_in_order(make_manager: Any) -> None:
    """The fault suite's late delivery (a loaded store: 2's write lands after 3 was published
    and after the first read of the hole). With `write_timeout` the server reads the hole
    again every `reorder_window` instead of skipping it: 2 comes out before 3, not late."""
    store = HeldStore()
    history = RoomHistory(store, reorder_window=0.05, write_timeout=30.0)
    async with (
        make_manager(history=history) as manager,
        client(manager) as a,
        trio.open_nursery() as nursery,
    ):
        await a.request({"type": "join_room", "room": "r"})
        assert await manager.broadcast_to_room("r", {"type": "chat", "n": 1}) is not None
        assert await received(a, 1) == [1]
        nursery.start_soon(manager.broadcast_to_room, "r", {"type": "chat", "n": 2, "slow": True})
        await store.entered.wait()  # 2 is allocated; its write is held
        reads = store.reads
        await manager.broadcast_to_room("r", {"type": "chat", "n": 3})
        await wait_until(lambda: store.reads >= reads + 3)  # read three times, 2 not there
        store.release.set()  # 2 lands, and is published
        assert await received(a, 2) == [2, 3]
        assert manager.stats.reorder_skipped == 0 and manager.stats.reorder_late == 0
        await quiet(a)


def test_write_timeout_is_validated() -> None:
    for bad in (-1, "2", float("nan"), True):
        with pytest.raises(ValueError, match="write_timeout"):
            RoomHistory(write_timeout=bad)

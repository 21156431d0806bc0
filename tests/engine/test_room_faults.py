"""Room delivery under real faults (issue 12): two managers in one process, a RedisBroker and a
RedisSequencer on a Redis that the test starts itself, kills and restarts EMPTY on the same
port, and a CassandraStreamStore on the shared test node (a keyspace of its own).

Senders publish through both managers while Redis goes away and comes back. Each publish is
either acknowledged (`broadcast_to_room` returned a position) or refused (it raised). At the
end every member that stayed in the room must have received every acknowledged message exactly
once, in offset order; refused messages may or may not appear ("refused but stored").
No assertion depends on timing: `fail_after` only guards against deadlocks.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
import trio

from trio_rt import RedisBroker, RoomHistory, WebSocketManager
from trio_rt._engine.streams import StreamPosition, recover
from trio_rt.redis import RedisSequencer, RedisUnavailable

from ..conftest import Client, client, free_port, redis_on, wait_until

if TYPE_CHECKING:
    from trio_rt.cassandra import CassandraSession

GUARD = 60.0  # seconds: deadlock protection only
ROOM = "faults"


@dataclass
class Member:
    """A raw client that stays in the room, and every message it got."""

    name: str
    conn: Client
    got: list[dict[str, Any]] = field(default_factory=list)

    async def receive(self) -> None:
        with contextlib.suppress(trio.ClosedResourceError, Exception):
            while True:
                msg = await self.conn.recv(limit=GUARD)
                self.got.append(msg)

    def chats(self) -> list[dict[str, Any]]:
        return [m for m in self.got if m.get("type") == "chat"]


@dataclass
class Ledger:
    """What the senders were told."""

    acked: dict[str, StreamPosition] = field(default_factory=dict)  # message id -> position
    refused: dict[str, str] = field(default_factory=dict)  # message id -> error

    def check(self, members: list[Member]) -> None:
        for m in members:
            chats = m.chats()
            ids = [c["id"] for c in chats]
            assert len(ids) == len(set(ids)), f"{m.name} got duplicates"
            missing = set(self.acked) - set(ids)
            assert not missing, f"{m.name} lost {len(missing)} acknowledged message(s)"
            unknown = set(ids) - set(self.acked) - set(self.refused)
            assert not unknown, f"{m.name} got messages nobody sent: {unknown}"
            offsets = [(c["position"]["epoch"], c["position"]["offset"]) for c in chats]
            in_order = all(a[0] != b[0] or a[1] < b[1] for a, b in itertools.pairwise(offsets))
            assert in_order, f"{m.name} got offsets out of order"
            assert not [g for g in m.got if g.get("type") == "room_gap"], f"{m.name} got a gap"


def make_manager(
    url: str, session: CassandraSession, keyspace: str, namespace: str, **broker: Any
) -> WebSocketManager:
    from trio_rt.cassandra import CassandraStreamStore

    store = CassandraStreamStore(session, keyspace)
    options: dict[str, Any] = {
        "reconnect_initial": 0.05,
        "reconnect_max": 0.4,
        "publish_timeout": 2.0,
        **broker,
    }
    return WebSocketManager(
        host="127.0.0.1",
        port=0,
        heartbeat_interval=None,
        broker=RedisBroker(url, **options),
        history=RoomHistory(store, RedisSequencer(url, namespace=namespace)),
    )


@contextlib.asynccontextmanager
async def deployment(
    url: str, session: CassandraSession, keyspace: str, **broker_b: Any
) -> AsyncIterator[tuple[WebSocketManager, WebSocketManager, list[Member]]]:
    """Two managers on one Redis and one Cassandra keyspace, two members on each."""
    from trio_rt.cassandra import CassandraStreamStore

    await CassandraStreamStore(session, keyspace).create_schema()
    namespace = "faults-" + uuid.uuid4().hex[:8]
    a = make_manager(url, session, keyspace, namespace)
    b = make_manager(url, session, keyspace, namespace, **broker_b)
    async with a, b, contextlib.AsyncExitStack() as stack:
        members: list[Member] = []
        for i, manager in enumerate((a, a, b, b)):
            conn = await stack.enter_async_context(client(manager))
            joined = await conn.request({"type": "join_room", "room": ROOM})
            assert joined["type"] == "room_joined"
            members.append(Member(f"member{i}@{'ab'[i // 2]}", conn))
        async with trio.open_nursery() as nursery:
            for m in members:
                nursery.start_soon(m.receive)
            yield a, b, members
            nursery.cancel_scope.cancel()


async def send(manager: WebSocketManager, ledger: Ledger, message_id: str) -> None:
    try:
        position = await manager.broadcast_to_room(ROOM, {"type": "chat", "id": message_id})
    except Exception as exc:  # refused: the sender is told (sequencer, store or broker)
        ledger.refused[message_id] = repr(exc)
    else:
        assert position is not None
        ledger.acked[message_id] = position


async def sender(manager: WebSocketManager, name: str, ledger: Ledger, stop: trio.Event) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        await send(manager, ledger, f"{name}-{n}")
        await trio.sleep(0.01)


async def settle(ledger: Ledger, members: list[Member], *managers: WebSocketManager) -> None:
    """A last message through each manager, once Redis is back for good; then every member
    has everything acknowledged before it (each manager orders its room by offset)."""
    for i, manager in enumerate(managers):
        with trio.fail_after(GUARD):
            while True:
                before = len(ledger.acked)
                await send(manager, ledger, f"last-{i}-{len(ledger.refused)}")
                if len(ledger.acked) > before:
                    break
                await trio.sleep(0.1)
    with trio.fail_after(GUARD):
        await wait_until(
            lambda: all(set(ledger.acked) <= {c["id"] for c in m.chats()} for m in members),
            limit=GUARD,
        )


@pytest.mark.slow
@pytest.mark.parametrize("down", [1.0, 3.0], ids=["down-1s", "down-3s-beyond-publish-timeout"])
async def test_redis_killed_and_restarted_empty_under_traffic_loses_and_repeats_nothing(
    session: CassandraSession, keyspace: str, down: float
) -> None:
    """Redis is killed mid-traffic, stays down longer than the reconnect backoff (and, in the
    second run, longer than publish_timeout), and comes back empty on the same port: the
    sequencer reseeds from Cassandra (a gap of 1,000 offsets), both brokers resubscribe."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    ledger = Ledger()
    with redis_on(port) as first:
        async with (
            deployment(url, session, keyspace) as (a, b, members),
            trio.open_nursery() as nursery,
        ):
            stop = trio.Event()
            nursery.start_soon(sender, a, "a", ledger, stop)
            nursery.start_soon(sender, b, "b", ledger, stop)
            await wait_until(lambda: len(ledger.acked) >= 20, limit=GUARD)
            first.kill()
            await trio.to_thread.run_sync(first.wait)
            await trio.sleep(down)  # publishing during the outage: refused
            acked_before_restart = len(ledger.acked)
            with redis_on(port):  # empty
                await wait_until(
                    lambda: len(ledger.acked) >= acked_before_restart + 20, limit=GUARD
                )
                stop.set()
                await settle(ledger, members, a, b)
                ledger.check(members)
                assert ledger.refused, "the outage refused nothing: it was not exercised"
                for m in (a, b):
                    assert m.broker.stats.resubscribed >= 1  # type: ignore[attr-defined]


@pytest.mark.slow
async def test_what_a_server_missed_while_resubscribing_is_read_from_the_store(
    session: CassandraSession, keyspace: str
) -> None:
    """After the restart server A publishes at once while server B is still reconnecting (its
    backoff is longer): B's members would never get those messages through pub/sub. B re-reads
    the store once its subscriptions are back."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    ledger = Ledger()
    with redis_on(port) as first:
        slow = {"reconnect_initial": 1.5, "reconnect_max": 1.5}
        async with deployment(url, session, keyspace, **slow) as (a, b, members):
            for n in range(5):
                await send(a, ledger, f"before-{n}")
            first.kill()
            await trio.to_thread.run_sync(first.wait)
            await wait_until(lambda: not a.broker.connected and not b.broker.connected)  # type: ignore[attr-defined]
            with redis_on(port):
                with trio.fail_after(GUARD):
                    n = 0
                    while len(ledger.acked) < 15:
                        n += 1
                        await send(a, ledger, f"after-{n}")
                        await trio.sleep(0.01)
                assert b.broker.stats.resubscribed == 0  # type: ignore[attr-defined]
                # Nothing more is sent: B's members get what they missed once B is back.
                with trio.fail_after(GUARD):
                    await wait_until(
                        lambda: all(
                            set(ledger.acked) <= {c["id"] for c in m.chats()} for m in members
                        ),
                        limit=GUARD,
                    )
                assert b.broker.stats.resubscribed == 1  # type: ignore[attr-defined]
                assert b.stats.reorder_healed >= 1  # from the store
                await settle(ledger, members, a, b)
                ledger.check(members)


async def test_recovery_from_positions_never_written_on_cassandra(
    session: CassandraSession, keyspace: str
) -> None:
    """A failed write, and the sequencer's reseed gap, leave offsets that were handed out
    (room_joined positions) but never written: recovery from them is not `retention`."""
    from trio_rt._engine.streams import Allocation
    from trio_rt.cassandra import CassandraStreamStore

    store = CassandraStreamStore(session, keyspace)
    await store.create_schema()
    epoch = "e" + uuid.uuid4().hex[:7]

    async def write(offset: int) -> None:
        await store.append("s", Allocation(StreamPosition(offset, epoch), offset), "{}")

    for offset in (1, 2, 4, 1005, 1006):  # 3: a failed write; 5..1004: a reseed gap
        await write(offset)
    current = StreamPosition(1006, epoch)
    for since, expected in ((3, [4, 1005, 1006]), (500, [1005, 1006]), (1004, [1005, 1006])):
        result = await recover(store, "s", StreamPosition(since, epoch), current, limit=10)
        assert result.recovered, since
        assert [e.position.offset for e in result.entries] == expected
    start = await recover(store, "s", StreamPosition(0, epoch), current, limit=10)
    assert start.recovered and len(start.entries) == 5
    # `since` at 0 while entry 1 is not there (expired, or never written): cannot tell.
    other = "f" + uuid.uuid4().hex[:7]
    await store.append("t", Allocation(StreamPosition(2, other), 2), "{}")
    gone = await recover(store, "t", StreamPosition(0, other), StreamPosition(2, other), limit=5)
    assert gone.reason == "retention"


async def test_the_sequencer_refuses_while_redis_is_down_and_never_repeats_a_position() -> None:
    """While Redis is down `next` raises (the sender is refused); after Redis restarted empty
    it continues the epoch past the store's head by `reseed_gap`, beyond the positions still
    being written, and concurrent allocations stay unique."""
    from trio_rt._engine.streams import MemoryStreamStore

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    store = MemoryStreamStore()
    sequencer = RedisSequencer(url, namespace="seq-" + uuid.uuid4().hex[:8], reseed_gap=100)
    sequencer.attach(store)
    handed: list[StreamPosition] = []
    with redis_on(port) as first:
        async with sequencer:
            for _ in range(5):
                allocation = await sequencer.next("s")
                await store.append("s", allocation, "{}")
                handed.append(allocation.position)
            in_flight = await sequencer.next("s")  # handed out; its write has not landed
            handed.append(in_flight.position)
            first.kill()
            await trio.to_thread.run_sync(first.wait)
            with trio.fail_after(GUARD):
                with pytest.raises(RedisUnavailable):
                    await sequencer.next("s")
                with pytest.raises(RedisUnavailable):
                    await sequencer.current("s")
            with redis_on(port):  # empty: the sequence is gone
                after: list[StreamPosition] = []

                async def allocate() -> None:
                    after.append((await sequencer.next("s")).position)

                async with trio.open_nursery() as nursery:
                    for _ in range(20):
                        nursery.start_soon(allocate)
            epoch = handed[0].epoch
            assert {p.epoch for p in after} == {epoch}  # the same epoch goes on
            offsets = sorted(p.offset for p in after)
            assert offsets == list(range(5 + 100 + 1, 5 + 100 + 21))  # head + gap + 1...
            assert offsets[0] > in_flight.position.offset
            assert not set(after) & set(handed)

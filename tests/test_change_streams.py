"""Change streams on the real Cassandra (and real Redis for two servers).

Stream store contract (memory and Cassandra), watchers with many concurrent writers on two
servers, restart and resume, a clock stepping back, a slow batch (a hole filled late), a
write whose notification never comes, and client subscriptions with filters, permissions and
recovery.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio_asyncio

from trio_rt import Connection, WebSocketManager
from trio_rt._changes import ChangeEvent, ChangeLog, ChangeStreamManager
from trio_rt._protocol import StreamPosition
from trio_rt._redis_streams import RedisSequencer
from trio_rt._streams import MemorySequencer, MemoryStreamStore, StreamStore
from trio_rt.cassandra import CassandraSession, Column, Database, Table
from trio_rt.cassandra._streams import CassandraStreamStore
from trio_rt.testing.services import CassandraEndpoint

from .conftest import client, wait_until

GUARD = 60.0  # deadlock protection only


def posts() -> Table:
    return Table(
        "posts",
        [
            Column("id", "int"),
            Column("author", "text"),
            Column("title", "text"),
            Column("score", "int"),
        ],
        partition_key="id",
    )


async def make_db(session: CassandraSession, keyspace: str) -> Database:
    db = Database(session, keyspace)
    await db.create_table(posts())
    return db


# -- the store contract -------------------------------------------------------------------------
@pytest.fixture(params=["memory", "cassandra"])
async def store(
    request: pytest.FixtureRequest, session: CassandraSession, keyspace: str
) -> AsyncIterator[StreamStore]:
    if request.param == "memory":
        yield MemoryStreamStore()
        return
    # Tiny buckets so that reads cross bucket and shard boundaries.
    cassandra = CassandraStreamStore(session, keyspace, bucket_size=4, shards=2)
    await cassandra.create_schema()
    yield cassandra


async def test_store_contract(store: StreamStore) -> None:
    seq = MemorySequencer()
    seq.attach(store)
    assert await store.head("s") is None
    allocations = [await seq.next("s") for _ in range(11)]
    # Written out of order (concurrent writers): 1..11 except 6, then 6.
    for a in allocations:
        if a.position.offset != 6:
            await store.append("s", a, json.dumps({"n": a.position.offset}))
    epoch = allocations[0].position.epoch
    got = await store.read("s", epoch, 0, 100)
    assert [e.position.offset for e in got] == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]
    await store.append("s", allocations[5], json.dumps({"n": 6}))
    assert [e.position.offset for e in await store.read("s", epoch, 3, 4)] == [4, 5, 6, 7]
    assert [json.loads(e.payload)["n"] for e in await store.read("s", epoch, 9, 100)] == [10, 11]
    assert await store.read("s", "other-epoch", 0, 100) == []
    assert [e.position.offset for e in await store.latest("s", epoch, 3)] == [9, 10, 11]
    assert [e.position.offset for e in await store.latest("s", epoch, 3, before=6)] == [3, 4, 5]
    assert await store.contains("s", StreamPosition(6, epoch))
    assert not await store.contains("s", StreamPosition(12, epoch))
    head = await store.head("s")
    assert head is not None and head.position.offset == 11
    assert head.timestamp == allocations[-1].timestamp
    # A new sequencer (a restart) continues the stream after the head, in the same epoch.
    restarted = MemorySequencer()
    restarted.attach(store)
    assert (await restarted.next("s")).position == StreamPosition(12, epoch)


async def one_server(db: Database, **options: Any) -> tuple[WebSocketManager, ChangeStreamManager]:
    """A manager (not serving yet) with a ChangeStreamManager on `db`, schema created."""
    manager = WebSocketManager(host="127.0.0.1", port=0, heartbeat_interval=None)
    changes = ChangeStreamManager(db, manager, **options)
    await changes.create_schema()
    return manager, changes


# -- helpers ------------------------------------------------------------------------------------
class Recorder:
    def __init__(self) -> None:
        self.events: list[ChangeEvent] = []

    async def __call__(self, event: ChangeEvent) -> None:
        self.events.append(event)
        await trio.lowlevel.checkpoint()

    @property
    def offsets(self) -> list[int]:
        return [e.position.offset for e in self.events]


async def test_watchers_on_two_servers_see_every_change_once_in_order(
    session: CassandraSession, keyspace: str, redis_url: str
) -> None:
    from trio_rt import RedisBroker

    table = posts()
    writers, per_writer = 8, 25
    async with trio_asyncio.open_loop():
        managers, streams, recorders = [], [], []
        for _ in range(2):
            db = await make_db(session, keyspace)
            manager = WebSocketManager(
                host="127.0.0.1", port=0, heartbeat_interval=None, broker=RedisBroker(redis_url)
            )
            changes = ChangeStreamManager(
                db,
                manager,
                sequencer=RedisSequencer(redis_url, namespace="t" + keyspace),
                poll_interval=5.0,  # long: nudges through Redis must do the waking
            )
            await changes.create_schema()
            managers.append(manager)
            streams.append(changes)
        async with managers[0], managers[1]:
            for changes in streams:
                recorder = Recorder()
                recorders.append(recorder)
                await changes.watch(table, callback=recorder)

            async def writer(w: int) -> None:
                db = streams[w % 2].db
                for i in range(per_writer):
                    key = w * 1000 + i
                    await db.insert(table, {"id": key, "author": f"w{w}", "title": "t", "score": i})
                    if i % 5 == 0:
                        await db.update(table, {"id": key}, {"score": -1})

            with trio.fail_after(GUARD):
                async with trio.open_nursery() as nursery:
                    for w in range(writers):
                        nursery.start_soon(writer, w)
                total = writers * per_writer + writers * (per_writer // 5)
                for recorder in recorders:
                    await wait_until(lambda r=recorder: len(r.events) >= total, GUARD)  # type: ignore[misc]
                await trio.sleep(0.2)  # a late duplicate would show up here
            for recorder in recorders:
                assert recorder.offsets == list(range(1, total + 1))
            # Both servers saw the same changes at the same positions.
            assert [e.to_json() for e in recorders[0].events] == [
                e.to_json() for e in recorders[1].events
            ]
            # Per key, updates come after their insert.
            first_op: dict[Any, str] = {}
            for e in recorders[0].events:
                first_op.setdefault(e.key["id"], e.operation)
            assert set(first_op.values()) == {"insert"}


async def test_a_named_watcher_resumes_after_a_restart_without_loss_or_repeat(
    session: CassandraSession, keyspace: str
) -> None:
    table = posts()
    db = await make_db(session, keyspace)
    seen: list[int] = []

    async def record(event: ChangeEvent) -> None:
        seen.append(event.data["id"])
        await trio.lowlevel.checkpoint()

    async def run_server(ids: range) -> None:
        manager, changes = await one_server(db, tables=[table])
        db.capture = changes.changelog
        async with manager:
            await changes.watch(table, callback=record, name="indexer")
            for i in ids:
                await db.insert(table, {"id": i, "author": "a", "title": "t", "score": 0})
            with trio.fail_after(GUARD):
                await wait_until(lambda: len(seen) >= ids.stop, GUARD)

    await run_server(range(0, 5))
    # Written while no server runs: the watcher must get these after the restart.
    offline = Database(session, keyspace)
    store = CassandraStreamStore(session, keyspace)
    sequencer = MemorySequencer()
    sequencer.attach(store)
    offline.capture = ChangeLog(store, sequencer)
    for i in range(5, 8):
        await offline.insert(table, {"id": i, "author": "a", "title": "t", "score": 0})
    await run_server(range(8, 10))
    assert seen == list(range(10))


async def test_a_clock_stepping_back_keeps_order_and_last_write_wins(
    session: CassandraSession, keyspace: str
) -> None:
    table = posts()
    db = await make_db(session, keyspace)
    now = [1_800_000_000 * 10**9]
    sequencer = MemorySequencer(clock=lambda: now[0])
    manager, changes = await one_server(db, sequencer=sequencer)
    recorder = Recorder()
    async with manager:
        await changes.watch(table, callback=recorder)
        await db.insert(table, {"id": 1, "author": "a", "title": "first", "score": 1})
        now[0] -= 3600 * 10**9  # NTP steps the clock back an hour
        await db.update(table, {"id": 1}, {"title": "second"})
        with trio.fail_after(GUARD):
            await wait_until(lambda: len(recorder.events) == 2, GUARD)
    assert [e.data.get("title") for e in recorder.events] == ["first", "second"]
    row = await db.get(table, {"id": 1})
    # A plain client timestamp an hour earlier would have lost to the first write.
    assert row is not None and row["title"] == "second"


async def test_a_slow_batch_is_delivered_in_order_when_it_lands(
    session: CassandraSession, keyspace: str
) -> None:
    table = posts()
    db = await make_db(session, keyspace)
    manager, changes = await one_server(db, poll_interval=0.05)
    recorder = Recorder()
    release = trio.Event()
    real_prepare = changes.changelog.prepare

    async def prepare(change: Any) -> Any:
        write = await real_prepare(change)
        if change.key["id"] == 2:
            await release.wait()  # this batch is slow: later writes commit before it
        return write

    changes.changelog.prepare = prepare  # type: ignore[method-assign]
    async with manager, trio.open_nursery() as nursery:
        await changes.watch(table, callback=recorder)
        await db.insert(table, {"id": 1, "author": "a", "title": "t", "score": 0})
        nursery.start_soon(db.insert, table, {"id": 2, "author": "a", "title": "t", "score": 0})
        await trio.sleep(0.01)
        for i in (3, 4):
            await db.insert(table, {"id": i, "author": "a", "title": "t", "score": 0})
        with trio.fail_after(GUARD):
            await wait_until(lambda: len(recorder.events) == 1, GUARD)
            await trio.sleep(0.3)  # 3 and 4 are visible but must wait behind the hole at 2
            assert [e.data["id"] for e in recorder.events] == [1]
            release.set()
            await wait_until(lambda: len(recorder.events) == 4, GUARD)
    assert [e.data["id"] for e in recorder.events] == [1, 2, 3, 4]
    assert changes.stats["skipped_holes"] == 0


async def test_a_writer_killed_between_write_and_notification(
    session: CassandraSession,
    keyspace: str,
    redis_url: str,
    cassandra_endpoint: CassandraEndpoint,
) -> None:
    import sys

    from trio_rt import RedisBroker

    table = posts()
    db = await make_db(session, keyspace)
    namespace = "k" + keyspace
    async with trio_asyncio.open_loop():
        manager = WebSocketManager(
            host="127.0.0.1", port=0, heartbeat_interval=None, broker=RedisBroker(redis_url)
        )
        changes = ChangeStreamManager(
            db,
            manager,
            sequencer=RedisSequencer(redis_url, namespace=namespace),
            poll_interval=0.2,
        )
        await changes.create_schema()
        recorder = Recorder()
        async with manager:
            await changes.watch(table, callback=recorder)
            await db.insert(table, {"id": 1, "author": "a", "title": "t", "score": 0})
            endpoint = f"{cassandra_endpoint.host}:{cassandra_endpoint.port}"
            argv = ["-m", "tests.change_writer", endpoint, redis_url, keyspace, namespace, "2"]
            result = await trio.run_process([sys.executable, *argv], check=False)
            assert result.returncode == 17  # it died right after its batch committed
            # No nudge will come: this server's poll finds the change.
            with trio.fail_after(GUARD):
                await wait_until(lambda: len(recorder.events) == 2, GUARD)
            await db.insert(table, {"id": 3, "author": "a", "title": "t", "score": 0})
            await wait_until(lambda: len(recorder.events) == 3, GUARD)
    assert [e.data["id"] for e in recorder.events] == [1, 2, 3]
    assert recorder.offsets == [1, 2, 3]


async def test_a_write_whose_notification_never_comes_is_found_by_polling(
    session: CassandraSession, keyspace: str
) -> None:
    table = posts()
    db = await make_db(session, keyspace)
    manager, changes = await one_server(db, poll_interval=0.1)
    recorder = Recorder()
    # Another process wrote and died before notifying anyone: a capture with no notify.
    silent = Database(session, keyspace)
    silent.capture = ChangeLog(changes.store, changes.sequencer, notify=None)
    async with manager:
        await changes.watch(table, callback=recorder)
        await silent.insert(table, {"id": 7, "author": "a", "title": "t", "score": 0})
        with trio.fail_after(GUARD):
            await wait_until(lambda: len(recorder.events) == 1, GUARD)
    assert recorder.events[0].data["id"] == 7


# -- client subscriptions -----------------------------------------------------------------------
async def test_subscriptions_filters_permissions_and_recovery(
    session: CassandraSession, keyspace: str
) -> None:
    table = posts()
    db = await make_db(session, keyspace)
    secret = Table("secrets", {"id": "int", "v": "text"}, partition_key="id")
    await db.create_table(secret)

    def may_read(conn: Any, table_name: str, action: str) -> bool:
        return table_name != "secrets"

    manager, changes = await one_server(db, tables=[table, secret], has_permission=may_read)
    async with manager:
        async with client(manager) as c:
            bad = await c.request({"type": "subscribe", "table": "posts", "filters": {"nope": 1}})
            assert bad["type"] == "error" and bad["code"] == "invalid_field"
            assert "nope" in bad["message"]
            denied = await c.request({"type": "subscribe", "table": "secrets"})
            unknown = await c.request({"type": "subscribe", "table": "nothing"})
            assert denied["code"] == unknown["code"] == "not_permitted"
            assert denied["message"].replace("secrets", "X") == unknown["message"].replace(
                "nothing", "X"
            )
            sub = await c.request(
                {
                    "type": "subscribe",
                    "table": "posts",
                    "filters": {"author": "ann", "score": {"gte": 10}},
                    "id": 1,
                }
            )
            assert sub["type"] == "subscribed" and sub["id"] == 1
            sid = sub["subscription"]
            for i, (author, score) in enumerate(
                [("ann", 5), ("bob", 50), ("ann", 10), ("ann", 99)]
            ):
                await db.insert(table, {"id": i, "author": author, "title": "t", "score": score})
            first = await c.recv()
            second = await c.recv()
            assert first["type"] == "data_update" and first["subscription"] == sid
            assert [first["event"]["data"]["score"], second["event"]["data"]["score"]] == [10, 99]
            assert first["event"]["operation"] == "insert"
            last = second["event"]["position"]
        # Away: changes happen; back with `since`: the missed matching ones, then the ack.
        await db.update(table, {"id": 3}, {"score": 100, "author": "ann"})
        await db.insert(table, {"id": 9, "author": "bob", "title": "t", "score": 100})
        await db.delete(table, {"id": 2})
        async with client(manager) as c:
            await c.send(
                {
                    "type": "subscribe",
                    "table": "posts",
                    "filters": {"author": "ann", "score": {"gte": 10}},
                    "since": last,
                }
            )
            replayed = await c.recv()
            assert replayed["type"] == "data_update"
            assert replayed["event"]["operation"] == "update"
            assert replayed["event"]["data"]["score"] == 100
            ack = await c.recv()
            assert ack["type"] == "subscribed" and ack["recovered"] is True
            unsub = await c.request({"type": "unsubscribe", "subscription": ack["subscription"]})
            assert unsub["type"] == "unsubscribed"
            again = await c.request({"type": "unsubscribe", "subscription": ack["subscription"]})
            assert again["code"] == "invalid_field"
        await wait_until(lambda: changes.subscription_count() == 0, GUARD)


async def test_python_client_renews_subscriptions_and_recovers(
    session: CassandraSession, keyspace: str
) -> None:
    from trio_rt.client import WebSocketClient

    table = posts()
    db = await make_db(session, keyspace)
    manager, changes = await one_server(db, tables=[table])
    async with manager, WebSocketClient(manager.url, initial_delay=0.01) as c:
        key = await c.subscribe("posts", {"author": "ann"})  # returns once live
        assert changes.subscription_count() == 1
        await db.insert(table, {"id": 1, "author": "ann", "title": "t", "score": 0})
        got = await c.receive()
        assert got["type"] == "data_update" and got["key"] == key
        (conn,) = manager.connections.values()
        await conn.close(1011, "test")
        await wait_until(lambda: changes.subscription_count() == 0, GUARD)
        await db.insert(table, {"id": 2, "author": "ann", "title": "missed", "score": 0})
        await db.insert(table, {"id": 3, "author": "bob", "title": "t", "score": 0})
        got = await c.receive()  # replayed before `subscribed`: still carries the key
        assert got["type"] == "data_update" and got["event"]["data"]["title"] == "missed"
        assert got["key"] == key
        await db.insert(table, {"id": 4, "author": "ann", "title": "live", "score": 0})
        got = await c.receive()
        assert got["event"]["data"]["title"] == "live"


# -- persistent rooms and room history in Cassandra --------------------------------------------
async def test_persistent_rooms_and_their_history_survive_a_restart(
    session: CassandraSession, keyspace: str
) -> None:
    from trio_rt import RoomHistory
    from trio_rt.cassandra import CassandraRoomStore

    stream_store = CassandraStreamStore(session, keyspace)
    await stream_store.create_schema()
    room_store = CassandraRoomStore(session, keyspace)
    await room_store.create_schema()

    def server() -> WebSocketManager:
        # A fresh MemorySequencer each time: a restarted process continues from Cassandra.
        manager = WebSocketManager(
            host="127.0.0.1",
            port=0,
            heartbeat_interval=None,
            history=RoomHistory(stream_store),
            room_store=room_store,
        )

        @manager.on_connection
        async def identify(conn: Connection) -> None:
            conn.user_id = conn.request.query.get("user", [None])[0]

        return manager

    first = server()
    async with first:
        await first.create_room(
            "lobby", persistent=True, max_users=2, moderators=["mod"], private=True
        )
        await first.create_room("scratch", persistent=True)
        async with client(first, "/?user=mod") as c:
            await c.request({"type": "join_room", "room": "lobby"})
            for i in range(3):
                await first.broadcast_to_room("lobby", {"type": "chat", "n": i})
            got = [await c.recv() for _ in range(3)]
            seen_first = got[0]["position"]
        await first.delete_room("scratch")
    second = server()
    async with second:
        lobby = second.get_room("lobby")
        assert lobby is not None and lobby.persistent
        assert lobby.max_users == 2 and lobby.moderators == frozenset({"mod"}) and lobby.private
        assert second.get_room("scratch") is None
        await second.broadcast_to_room("lobby", {"type": "chat", "n": 3})
        async with client(second) as stranger:
            denied = await stranger.request({"type": "join_room", "room": "lobby"})
            assert denied["code"] == "not_permitted"
        async with client(second, "/?user=mod") as c:
            await c.send({"type": "join_room", "room": "lobby", "since": seen_first})
            assert [(await c.recv())["n"] for _ in range(3)] == [1, 2, 3]
            ack = await c.recv()
            assert ack["recovered"] is True and ack["position"]["offset"] == 4
            assert ack["position"]["epoch"] == seen_first["epoch"]
            page = await c.request({"type": "history", "room": "lobby", "limit": 10})
            assert [m["n"] for m in page["messages"]] == [0, 1, 2, 3]

"""Change streams on the real Cassandra (and real Redis for two servers).

Stream store contract (memory and Cassandra), watchers with many concurrent writers on two
servers, restart and resume, a clock stepping back, a slow batch (a hole filled late), a
write whose notification never comes, and client subscriptions with filters, permissions and
recovery.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_rt import Connection, WebSocketManager
from trio_rt._core.protocol import StreamPosition
from trio_rt._engine.change_reader import change_event
from trio_rt._engine.changes import ChangeEvent, ChangeLog, ChangeStreamManager, Watch
from trio_rt._engine.streams import MemorySequencer, MemoryStreamStore, StreamStore
from trio_rt.cassandra import CassandraSession, CassandraUnavailable, Column, Database, Table
from trio_rt.cassandra._streams import CassandraStreamStore
from trio_rt.redis import RedisSequencer
from trio_rt.testing.services import CassandraEndpoint

from ..conftest import client, wait_until

GUARD = 60.0  # deadlock protection only
ROOT = Path(__file__).resolve().parents[2]


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


async def posts_server(
    session: CassandraSession, keyspace: str, **options: Any
) -> tuple[Table, Database, WebSocketManager, ChangeStreamManager, Recorder]:
    """`one_server` on a fresh posts table, with a Recorder to watch it."""
    db = await make_db(session, keyspace)
    manager, changes = await one_server(db, **options)
    return posts(), db, manager, changes, Recorder()


async def test_watchers_on_two_servers_see_every_change_once_in_order(
    session: CassandraSession, keyspace: str, redis_url: str
) -> None:
    from trio_rt import RedisBroker

    table = posts()
    writers, per_writer = 8, 25
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

    async def run_server(ids: range) -> Watch:
        manager, changes = await one_server(db, tables=[table])
        db.capture = changes.changelog
        async with manager:
            watch = await changes.watch(table, callback=record, name="indexer")
            loaded.append(watch.saved)
            for i in ids:
                await db.insert(table, {"id": i, "author": "a", "title": "t", "score": 0})
            with trio.fail_after(GUARD):
                await wait_until(lambda: len(seen) >= ids.stop, GUARD)
        # Stopped: what it handed out is stored, and `saved` says so.
        assert watch.saved is not None and watch.saved == watch.position
        return watch

    loaded: list[StreamPosition | None] = []
    first = await run_server(range(0, 5))
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
    # The restart loaded what the first run stored (a new watcher has nothing stored).
    assert loaded == [None, first.saved]


async def test_a_named_watcher_stopped_mid_batch_repeats_nothing_it_finished(
    session: CassandraSession, keyspace: str
) -> None:
    # A graceful stop cancels the watcher inside a callback: the position of the callbacks
    # that finished is saved (it was saved only after a whole batch: a restart repeated them).
    table = posts()
    db = await make_db(session, keyspace)
    finished: list[int] = []
    first_started, writes_done, third_started = trio.Event(), trio.Event(), trio.Event()

    async def record(event: ChangeEvent) -> None:
        key = event.data["id"]
        if key == 0 and not finished:
            first_started.set()
            await writes_done.wait()  # the next read gets 1..4 in one batch
        if key == 2 and not third_started.is_set():
            third_started.set()
            await trio.sleep_forever()  # interrupted by the stop
        finished.append(key)

    manager, changes = await one_server(db)
    with trio.fail_after(GUARD):
        async with manager:
            await changes.watch(table, callback=record, name="indexer")
            await db.insert(table, {"id": 0, "author": "a", "title": "t", "score": 0})
            await first_started.wait()
            for i in range(1, 5):
                await db.insert(table, {"id": i, "author": "a", "title": "t", "score": 0})
            writes_done.set()
            await third_started.wait()
        assert finished == [0, 1]
        db.capture = None
        manager, changes = await one_server(db)
        async with manager:
            await changes.watch(table, callback=record, name="indexer")
            await wait_until(lambda: len(finished) >= 5, GUARD)
            await trio.sleep(0.2)  # a repeat still on its way would show up here
    assert finished == [0, 1, 2, 3, 4]  # 2 again (its callback never finished), 1 not


async def test_a_fresh_tail_does_not_wait_for_a_gap_older_than_the_hole_timeout(
    session: CassandraSession, keyspace: str
) -> None:
    # Offsets 3..5 were allocated an hour ago and never written (failed writes, or a reseed
    # gap). A tail starting now (a restarted server's first subscriber) skips them at once
    # instead of holding everything for another hole_timeout.
    table = posts()
    db = await make_db(session, keyspace)
    an_hour_ago = [(time.time() - 3600) * 1e9]
    sequencer = MemorySequencer(clock=lambda: int(an_hour_ago[0]))
    manager, changes = await one_server(db, tables=[table], sequencer=sequencer, hole_timeout=600.0)
    row = {"author": "a", "title": "t", "score": 0}
    for i in range(1, 3):
        await db.insert(table, {"id": i, **row})
    for _ in range(3):
        await sequencer.next("table:posts")  # allocated, never written
    await db.insert(table, {"id": 6, **row})
    with trio.fail_after(GUARD):
        async with manager, client(manager) as c:
            sub = await c.request({"type": "subscribe", "table": "posts"})
            assert sub["position"]["offset"] == 6
            await db.insert(table, {"id": 7, **row})
            got: list[dict[str, Any]] = []
            assert await updates_until(c, 7, got) == [7]
    assert changes.stats["skipped_holes"] == 3


async def test_a_watcher_outlives_failing_store_reads(
    session: CassandraSession, keyspace: str
) -> None:
    # Cassandra unreachable for a moment: the tail's reads fail. They are retried; the
    # watcher (and the server) go on. (They raised out of the watcher task and took the
    # whole server down.)
    table = posts()
    db = await make_db(session, keyspace)
    manager, changes = await one_server(db, poll_interval=0.05)
    # The tail must read these writes back (as another process's): not from memory.
    changes.changelog.remember = None
    recorder = Recorder()
    failures = [0]
    real_read = changes.store.read

    async def read(*args: Any, **kwargs: Any) -> Any:
        if failures[0] < 3:
            failures[0] += 1
            raise CassandraUnavailable("no host available (injected)")
        return await real_read(*args, **kwargs)

    with trio.fail_after(GUARD):
        async with manager:
            await changes.watch(table, callback=recorder)
            changes.store.read = read  # type: ignore[method-assign]
            await db.insert(table, {"id": 1, "author": "a", "title": "t", "score": 0})
            await wait_until(lambda: len(recorder.events) == 1, GUARD)
            await db.insert(table, {"id": 2, "author": "a", "title": "t", "score": 0})
            await wait_until(lambda: len(recorder.events) == 2, GUARD)
    assert recorder.offsets == [1, 2] and failures[0] == 3
    assert changes.stats["read_errors"] == 3


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


async def test_a_tail_takes_the_entries_its_server_stored_from_memory(
    session: CassandraSession, keyspace: str
) -> None:
    # The entries this server's writes stored are handed to its tails with the wake-up: no
    # read-back from the store (the latency path), same order and content as a read.
    table, db, manager, changes, recorder = await posts_server(session, keyspace, poll_interval=5.0)
    reads = 0
    real_read = changes.store.read

    async def read(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return await real_read(*args, **kwargs)

    async with manager:
        await changes.watch(table, callback=recorder)
        changes.store.read = read  # type: ignore[method-assign]
        with trio.fail_after(GUARD):
            for i in range(1, 6):
                await db.insert(table, {"id": i, "author": "a", "title": "t", "score": i})
            await db.update(table, {"id": 1}, {"score": -1})
            await wait_until(lambda: len(recorder.events) == 6, GUARD)
    assert recorder.offsets == list(range(1, 7))
    assert [(e.operation, e.key["id"]) for e in recorder.events] == [
        *(("insert", i) for i in range(1, 6)),
        ("update", 1),
    ]
    epoch = recorder.events[0].position.epoch
    stored = await real_read("table:posts", epoch, 0, 100)
    assert [change_event("posts", e).to_json() for e in stored] == [
        e.to_json() for e in recorder.events
    ]
    assert reads == 0
    assert changes.stats["from_memory"] == 6


async def test_a_slow_batch_is_delivered_in_order_when_it_lands(
    session: CassandraSession, keyspace: str
) -> None:
    table, db, manager, changes, recorder = await posts_server(
        session, keyspace, poll_interval=0.05
    )
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
        argv = ["-m", "tests.engine.change_writer", endpoint, redis_url, keyspace, namespace, "2"]
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
    table, _db, manager, changes, recorder = await posts_server(
        session, keyspace, poll_interval=0.1
    )
    # Another process wrote and died before notifying anyone: a capture with no notify.
    silent = Database(session, keyspace)
    silent.capture = ChangeLog(changes.store, changes.sequencer, notify=None)
    async with manager:
        await changes.watch(table, callback=recorder)
        await silent.insert(table, {"id": 7, "author": "a", "title": "t", "score": 0})
        with trio.fail_after(GUARD):
            await wait_until(lambda: len(recorder.events) == 1, GUARD)
    assert recorder.events[0].data["id"] == 7


# A process with the cassandra extra and without the redis one (no redis-py, no trio_asyncio):
# it writes through a ChangePublisher on memory backends, and the store gets the change.
_PUBLISHER_WITHOUT_REDIS = """
import sys
for name in ("redis", "hiredis", "trio_asyncio"):
    sys.modules[name] = None  # as if the redis extra were not installed
import trio
from trio_rt import ChangePublisher, MemoryBroker, MemorySequencer
from trio_rt.cassandra import CassandraSession, Column, Database, Table

async def main(host, port, keyspace):
    table = Table("posts", [Column("id", "int"), Column("title", "text")], partition_key="id")
    async with CassandraSession.connect([host], port=int(port)) as session:
        db = Database(session, keyspace)
        await db.create_table(table)
        publisher = ChangePublisher(db, broker=MemoryBroker(), sequencer=MemorySequencer())
        await publisher.store.create_schema()
        async with publisher:
            await db.insert(table, {"id": 1, "title": "t"})
        head = await publisher.store.head("table:posts")
    print("offset", head.position.offset if head else None)

trio.run(main, *sys.argv[1:])
"""


async def test_a_publisher_on_memory_backends_needs_no_redis_extra(
    cassandra_endpoint: CassandraEndpoint, keyspace: str
) -> None:
    """The trio-asyncio loop is for Redis components only: without one, a ChangePublisher
    neither needs the redis extra nor imports trio_asyncio (which patches asyncio)."""
    result = await trio.run_process(
        [
            sys.executable,
            "-c",
            _PUBLISHER_WITHOUT_REDIS,
            cassandra_endpoint.host,
            str(cassandra_endpoint.port),
            keyspace,
        ],
        cwd=ROOT,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert result.stdout.split() == [b"offset", b"1"]


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


async def recv_updates(c: Any, count: int) -> list[dict[str, Any]]:
    """The next `count` data_update messages (anything else is a test failure)."""
    got = [await c.recv() for _ in range(count)]
    assert [m["type"] for m in got] == ["data_update"] * count, got
    return got


def offsets_of(messages: list[dict[str, Any]]) -> list[int]:
    return [m["event"]["position"]["offset"] for m in messages]


async def updates_until(
    c: Any,
    offset: int,
    into: list[dict[str, Any]],
    acks: list[dict[str, Any]] | None = None,
    limit: float = 5.0,
) -> list[int]:
    """Receive until a data_update at `offset` or beyond; data_updates go to `into`, a
    `subscribed` reply to `acks`. Returns the offsets received so far, in arrival order.
    `limit`: the deadlock guard per message."""
    while not into or into[-1]["event"]["position"]["offset"] < offset:
        message = await c.recv(limit)
        if message["type"] == "subscribed" and acks is not None:
            message["after_updates"] = len(into)  # how many data_updates came before it
            acks.append(message)
            continue
        assert message["type"] == "data_update", message
        into.append(message)
    return offsets_of(into)


async def test_a_renewed_subscription_gets_each_change_once_when_the_store_is_ahead_of_the_tail(
    session: CassandraSession, keyspace: str
) -> None:
    # Issue 12: a renewed subscription's replay read past the live tail's position (up to
    # the store head), the offsets it sent were forgotten at the flush, and the tail then
    # sent them again.
    table = posts()
    db = await make_db(session, keyspace)
    manager, changes = await one_server(db, tables=[table], poll_interval=60.0)
    # Another process's writes whose nudges have not arrived: in the store, unseen by the tail.
    elsewhere = Database(session, keyspace)
    elsewhere.capture = ChangeLog(changes.store, changes.sequencer, notify=None)
    with trio.fail_after(GUARD):
        async with manager, client(manager) as first:
            sub = await first.request({"type": "subscribe", "table": "posts", "id": 1})
            assert sub["type"] == "subscribed"
            for i in range(3):
                await db.insert(table, {"id": i, "author": "a", "title": "t", "score": i})
            seen = await recv_updates(first, 3)
            last = seen[-1]["event"]["position"]
            for i in range(3, 6):
                await elsewhere.insert(table, {"id": i, "author": "a", "title": "t", "score": i})
            async with client(manager) as renewed:
                await renewed.send({"type": "subscribe", "table": "posts", "since": last, "id": 2})
                got: list[dict[str, Any]] = []
                while (message := await renewed.recv())["type"] != "subscribed":
                    got.append(message)  # (the fixed server sends nothing before the reply)
                acks = [message]
                # A write through this server wakes the tail: it reads 4..7.
                await db.insert(table, {"id": 6, "author": "a", "title": "t", "score": 6})
                await updates_until(renewed, 7, got, acks)
                # Then one more: a duplicate still on its way would come before it.
                await db.insert(table, {"id": 7, "author": "a", "title": "t", "score": 7})
                assert await updates_until(renewed, 8, got, acks) == [4, 5, 6, 7, 8]
                assert [a["recovered"] for a in acks] == [True]
                assert offsets_of(await recv_updates(first, 5)) == [4, 5, 6, 7, 8]


async def test_a_since_ahead_of_the_tail_repeats_nothing_and_one_past_the_head_is_capped(
    session: CassandraSession, keyspace: str
) -> None:
    table = posts()
    db = await make_db(session, keyspace)
    manager, changes = await one_server(db, tables=[table], poll_interval=60.0)
    elsewhere = Database(session, keyspace)
    elsewhere.capture = ChangeLog(changes.store, changes.sequencer, notify=None)
    row = {"author": "a", "title": "t", "score": 0}
    with trio.fail_after(GUARD):
        async with manager, client(manager) as first:
            await first.request({"type": "subscribe", "table": "posts"})
            await db.insert(table, {"id": 1, **row})
            epoch = (await first.recv())["event"]["position"]["epoch"]
            # Written, not yet seen by this server's tail: a client coming from a faster
            # server has seen 2 and 3 already.
            for i in (2, 3):
                await elsewhere.insert(table, {"id": i, **row})
            async with client(manager) as ahead, client(manager) as dreamer:
                since = {"offset": 3, "epoch": epoch}
                ack = await ahead.request({"type": "subscribe", "table": "posts", "since": since})
                assert ack["recovered"] is True and ack["position"]["offset"] == 3
                beyond = {"offset": 10**9, "epoch": epoch}  # no server handed that out
                ack = await dreamer.request(
                    {"type": "subscribe", "table": "posts", "since": beyond}
                )
                assert ack["recovered"] is True and ack["position"]["offset"] == 3
                await db.insert(table, {"id": 4, **row})
                for c in (ahead, dreamer):
                    got: list[dict[str, Any]] = []
                    assert await updates_until(c, 4, got) == [4]


async def test_a_hole_open_when_the_tail_starts_keeps_order_for_renewed_and_new_subscriptions(
    session: CassandraSession, keyspace: str
) -> None:
    # A fresh live tail (a restarted server) starts while a write is in flight: offset 2 is
    # allocated, 3 and 4 are already visible. Every subscriber gets 2, 3, 4 once, in order.
    table = posts()
    db = await make_db(session, keyspace)
    manager, changes = await one_server(db, tables=[table])
    allocated, release = trio.Event(), trio.Event()
    real_prepare = changes.changelog.prepare

    async def prepare(change: Any) -> Any:
        write = await real_prepare(change)
        if change.key["id"] == 2:
            allocated.set()
            await release.wait()  # this batch is slow: 3 and 4 commit before it
        return write

    changes.changelog.prepare = prepare  # type: ignore[method-assign]
    row = {"author": "a", "title": "t", "score": 0}
    with trio.fail_after(GUARD):
        async with manager, trio.open_nursery() as nursery:
            await db.insert(table, {"id": 1, **row})
            nursery.start_soon(db.insert, table, {"id": 2, **row})
            await allocated.wait()
            for i in (3, 4):
                await db.insert(table, {"id": i, **row})
            async with client(manager) as renewed, client(manager) as new:
                epoch = (await changes.store.head("table:posts")).position.epoch  # type: ignore[union-attr]
                await renewed.send(
                    {"type": "subscribe", "table": "posts", "since": {"offset": 1, "epoch": epoch}}
                )
                await new.send({"type": "subscribe", "table": "posts"})
                got: dict[str, list[dict[str, Any]]] = {"renewed": [], "new": []}
                acks: dict[str, list[dict[str, Any]]] = {"renewed": [], "new": []}
                await wait_until(lambda: changes.subscription_count() == 2, GUARD)
                release.set()
                await updates_until(renewed, 4, got["renewed"], acks["renewed"])
                await db.insert(table, {"id": 5, **row})
                for name, c in (("renewed", renewed), ("new", new)):
                    assert await updates_until(c, 5, got[name], acks[name]) == [2, 3, 4, 5]
                    [ack] = acks[name]
                    # What came before the reply is at or below its position, the rest above.
                    before = offsets_of(got[name])[: ack["after_updates"]]
                    after = offsets_of(got[name])[ack["after_updates"] :]
                    assert all(o <= ack["position"]["offset"] < p for o in before for p in after)
                    assert all(ack["position"]["offset"] < p for p in after)
                assert acks["renewed"][0]["recovered"] is True
    assert changes.stats["skipped_holes"] == 0


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


# -- whole rows: the capability example routes updates and deletes too ------------------------
async def test_capability_example_routes_inserts_updates_and_deletes_by_category(
    session: CassandraSession, keyspace: str
) -> None:
    # Issue 14: only inserts reached the category room (an update carried the key and the
    # changed columns, a delete the key), and a filter on an unchanged column missed them.
    import uuid

    from trio_rt_examples.capabilities import change_streams

    manager, _, db = await change_streams.build(session, keyspace)
    table = change_streams.posts
    with trio.fail_after(GUARD):
        async with (
            manager,
            client(manager, "/?user=ann") as ann,
            client(manager, "/?user=bob") as bob,
        ):
            await ann.request({"type": "join_room", "room": "category:news"})
            await bob.request({"type": "join_room", "room": "category:sports"})
            sub = await ann.request(
                {"type": "subscribe", "table": "posts", "filters": {"category": "news"}}
            )
            assert sub["type"] == "subscribed"
            key = {"id": uuid.uuid4()}
            post = {**key, "category": "news", "author": "bob", "title": "t", "score": 1}

            async def both() -> dict[str, dict[str, Any]]:
                got = {(m := await ann.recv())["type"]: m for _ in range(2)}
                assert set(got) == {"post_update", "data_update"}
                return got

            await db.insert(table, post)
            got = await both()
            assert got["post_update"]["operation"] == "insert"
            await db.update(table, key, {"score": 2})
            got = await both()
            assert got["post_update"]["operation"] == "update"
            row = {**post, "id": str(post["id"]), "score": 2}
            assert got["post_update"]["data"] == row
            assert got["data_update"]["event"]["data"] == row
            await db.delete(table, key)
            got = await both()
            assert got["post_update"]["operation"] == "delete"
            assert got["post_update"]["data"] == row  # the last known row
            assert got["data_update"]["event"]["operation"] == "delete"
            # A post moved to another category reaches that category's room (the row after
            # the update); the "news" subscriber's filter no longer matches it.
            other = {"id": uuid.uuid4()}
            await db.insert(table, {**other, "category": "news", "title": "x", "score": 0})
            await both()
            await db.update(table, other, {"category": "sports"})
            moved = await bob.recv()
            assert moved["type"] == "post_update" and moved["operation"] == "update"
            assert moved["data"]["category"] == "sports" and moved["data"]["title"] == "x"
            await db.insert(table, {**key, "category": "news", "title": "again", "score": 3})
            got = await both()  # nothing about the moved post came in between
            assert got["post_update"]["data"]["title"] == "again"

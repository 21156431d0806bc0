"""Change streams under faults, on real Cassandra and a Redis each test starts (and kills)
itself: Redis restarted empty (the sequencer's reseed gap), a server restarted while a
write-only process (`ChangePublisher`) goes on writing, named watchers exactly once."""

from __future__ import annotations

import json
import sys
from typing import Any

import trio

from trio_rt import ChangePublisher, RedisBroker, RedisSequencer, WebSocketManager
from trio_rt._engine.changes import ChangeEvent, ChangeStreamManager
from trio_rt.cassandra import CassandraSession, Database
from trio_rt.testing.services import CassandraEndpoint

from ..conftest import client, free_port, redis_on, wait_until
from .test_change_streams import GUARD, make_db, posts, updates_until


def server(db: Database, url: str, namespace: str, **options: Any) -> ChangeStreamManager:
    manager = WebSocketManager(
        host="127.0.0.1",
        port=0,
        heartbeat_interval=None,
        broker=RedisBroker(url, reconnect_initial=0.05, reconnect_max=0.2),
    )
    return ChangeStreamManager(
        db, manager, sequencer=RedisSequencer(url, namespace=namespace), **options
    )


async def insert_retrying(db: Database, key: int) -> None:
    """A write right after Redis came back may fail once (the connection is re-made)."""
    for _ in range(50):
        try:
            await db.insert(posts(), {"id": key, "author": "ann", "title": "t", "score": key})
            return
        except Exception:
            await trio.sleep(0.1)
    raise AssertionError(f"could not write {key}")


async def test_redis_restarted_empty_costs_one_hole_timeout_not_one_per_reseeded_offset(
    session: CassandraSession, keyspace: str
) -> None:
    # Issue 12: RedisSequencer reseeds 1,000 offsets past the store's head after losing its
    # hash; the tails opened a hole timer per missing offset (1,000 x hole_timeout) and
    # subscribers and watchers got nothing more for hours. Here hole_timeout is 1 s: the
    # gap must cost about that once, well inside the deadlock guard.
    db = await make_db(session, keyspace)
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    seen: list[ChangeEvent] = []

    async def record(event: ChangeEvent) -> None:
        seen.append(event)
        await trio.lowlevel.checkpoint()

    with redis_on(port) as first:
        changes = server(db, url, "r" + keyspace, tables=[posts()], hole_timeout=1.0)
        await changes.create_schema()
        manager = changes.manager
        async with manager, client(manager) as c:
            await changes.watch(posts(), callback=record, name="indexer")
            sub = await c.request(
                {"type": "subscribe", "table": "posts", "filters": {"score": {"gte": 0}}}
            )
            assert sub["type"] == "subscribed"
            with trio.fail_after(GUARD):
                for key in range(5):
                    await db.insert(
                        posts(), {"id": key, "author": "ann", "title": "t", "score": key}
                    )
                got: list[dict[str, Any]] = []
                assert await updates_until(c, 5, got) == [1, 2, 3, 4, 5]
                first.terminate()
                await trio.to_thread.run_sync(first.wait)
                with redis_on(port):  # back, EMPTY, at the same address
                    for key in range(5, 10):
                        await insert_retrying(db, key)
                    # After the gap of 1,000 reseeded offsets: 1006..1010.
                    expected = [1, 2, 3, 4, 5, *range(1006, 1011)]
                    assert await updates_until(c, 1010, got, limit=GUARD) == expected
                    await wait_until(lambda: len(seen) == 10, GUARD)
    assert [e.position.offset for e in seen] == [1, 2, 3, 4, 5, *range(1006, 1011)]
    assert [e.data["id"] for e in seen] == list(range(10))
    assert changes.stats["skipped_holes"] == 2 * 1000  # the gap, once by each tail (2)


async def test_a_named_watcher_is_exactly_once_across_a_restart_while_a_publisher_writes(
    session: CassandraSession,
    keyspace: str,
    cassandra_endpoint: CassandraEndpoint,
) -> None:
    # A write-only process (tests/engine/change_writer.py: ChangePublisher, no WebSocket server)
    # writes while the server is down, then while it runs: its nudges wake the server (whose
    # poll interval is far longer than the guard). The named watcher resumes where it stopped
    # and sees every change once, in order.
    db = await make_db(session, keyspace)
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    namespace = "w" + keyspace
    endpoint = f"{cassandra_endpoint.host}:{cassandra_endpoint.port}"
    seen: list[ChangeEvent] = []

    async def record(event: ChangeEvent) -> None:
        seen.append(event)
        await trio.lowlevel.checkpoint()

    async def writer(first: int, count: int) -> None:
        argv = ["-m", "tests.engine.change_writer", endpoint, url, keyspace, namespace, str(first)]
        await trio.run_process([sys.executable, *argv, "--count", str(count)])

    with redis_on(port), trio.fail_after(GUARD):
        changes = server(db, url, namespace, poll_interval=600.0)
        await changes.create_schema()
        async with changes.manager:
            watch = await changes.watch(posts(), callback=record, name="indexer")
            assert watch.ready.is_set() and watch.position is not None
            for key in range(3):
                await db.insert(posts(), {"id": key, "author": "a", "title": "t", "score": 0})
            await wait_until(lambda: len(seen) == 3, GUARD)
        await writer(3, 4)  # while no server runs
        db.capture = None  # the restarted server installs its own capture
        changes = server(db, url, namespace, poll_interval=600.0)
        async with changes.manager:
            watch = await changes.watch(posts(), callback=record, name="indexer")
            await wait_until(lambda: len(seen) == 7, GUARD)  # resumed: 3..6
            await writer(7, 3)  # woken by the publisher's nudges, not by a poll
            await wait_until(lambda: len(seen) == 10, GUARD)
            assert watch.position is not None and watch.position.offset == 10
            assert changes.stats["nudges"] >= 1  # counted, for whoever wonders why none come
    assert [e.data["id"] for e in seen] == list(range(10))
    assert [e.position.offset for e in seen] == list(range(1, 11))


async def test_change_publisher_in_process_installs_the_capture_and_nudges(
    session: CassandraSession, keyspace: str, redis_url: str
) -> None:
    db = await make_db(session, keyspace)
    namespace = "p" + keyspace
    seen: list[ChangeEvent] = []

    async def record(event: ChangeEvent) -> None:
        seen.append(event)
        await trio.lowlevel.checkpoint()

    changes = server(await make_db(session, keyspace), redis_url, namespace, poll_interval=600.0)
    await changes.create_schema()
    async with changes.manager:
        await changes.watch(posts(), callback=record)
        publisher = ChangePublisher(
            db,
            broker=RedisBroker(redis_url),
            sequencer=RedisSequencer(redis_url, namespace=namespace),
        )
        assert db.capture is publisher.changelog
        try:
            ChangePublisher(db, broker=RedisBroker(redis_url), sequencer=publisher.sequencer)
        except ValueError as exc:
            assert "capture" in str(exc)
        else:
            raise AssertionError("a second capture on one Database was accepted")
        with trio.fail_after(GUARD):
            async with publisher:
                for key in range(3):
                    await db.insert(posts(), {"id": key, "author": "a", "title": "t", "score": 0})
            await wait_until(lambda: len(seen) == 3, GUARD)
    assert [e.data["id"] for e in seen] == [0, 1, 2]


async def test_two_servers_one_stopped_renewed_filtered_subscriptions_lose_and_repeat_nothing(
    session: CassandraSession, keyspace: str, redis_url: str
) -> None:
    # Issue 12's scenario in one process: a write-only publisher writes without pause; four
    # filtered subscribers on server A; A shuts down (as on SIGTERM); each subscriber renews
    # its subscription on server B with the last position it had. Per subscriber: every
    # matching change once, in position order.
    from websockets.exceptions import ConnectionClosed
    from websockets.trio.client import connect

    namespace = "s" + keyspace
    filters: list[dict[str, Any]] = [
        {"score": {"lt": 5}},
        {"score": {"gte": 5}},
        {},
        {"author": "w1"},
    ]
    writers, per_writer = 3, 40
    rows = {w * 1000 + i: (f"w{w}", i % 10) for w in range(writers) for i in range(per_writer)}

    def wanted(f: dict[str, Any]) -> set[int]:
        return {
            key
            for key, (author, score) in rows.items()
            if (
                "score" not in f
                or ("lt" in f["score"] and score < 5)
                or ("gte" in f["score"] and score >= 5)
            )
            and ("author" not in f or author == f["author"])
        }

    a = server(await make_db(session, keyspace), redis_url, namespace, tables=[posts()])
    b = server(await make_db(session, keyspace), redis_url, namespace, tables=[posts()])
    await a.create_schema()
    writer_db = Database(session, keyspace)
    publisher = ChangePublisher(
        writer_db,
        broker=RedisBroker(redis_url),
        sequencer=RedisSequencer(redis_url, namespace=namespace),
    )
    received: list[list[tuple[int, int]]] = [[] for _ in filters]
    renewals: list[dict[str, Any]] = []
    subscribed = trio.Semaphore(0)
    a_stopped = trio.Event()

    async def subscriber(n: int) -> None:
        position: dict[str, Any] | None = None
        expected = wanted(filters[n])
        for manager in (a.manager, b.manager):
            try:
                async with connect(manager.url, ping_interval=None) as ws:
                    await ws.recv()  # welcome
                    request: dict[str, Any] = {"type": "subscribe", "table": "posts"}
                    request["filters"] = filters[n]
                    if position is not None:
                        request["since"] = position
                    await ws.send(json.dumps(request))
                    while {key for _, key in received[n]} != expected:
                        message = json.loads(await ws.recv())
                        if message["type"] == "subscribed":
                            if position is not None:
                                renewals.append(message)
                            else:
                                subscribed.release()
                            position = message["position"]
                        else:
                            assert message["type"] == "data_update", message
                            event = message["event"]
                            received[n].append((event["position"]["offset"], event["data"]["id"]))
                            position = event["position"]
                    return
            except ConnectionClosed:
                assert manager is a.manager  # only A goes away
                await a_stopped.wait()

    async def write(w: int) -> None:
        for i in range(per_writer):
            await writer_db.insert(
                posts(), {"id": w * 1000 + i, "author": f"w{w}", "title": "t", "score": i % 10}
            )
            await trio.sleep(0.005)

    with trio.fail_after(GUARD):
        async with b.manager, publisher, trio.open_nursery() as nursery:
            await nursery.start(a.manager.serve)
            for n in range(len(filters)):
                nursery.start_soon(subscriber, n)
            for _ in filters:
                await subscribed.acquire()
            async with trio.open_nursery() as writing:
                for w in range(writers):
                    writing.start_soon(write, w)
                await wait_until(lambda: len(received[2]) >= len(rows) // 3, GUARD)
                a.manager.stop()  # graceful, as on SIGTERM
                await wait_until(lambda: a.manager._address is None, GUARD)
                a_stopped.set()
    for n, f in enumerate(filters):
        offsets = [o for o, _ in received[n]]
        keys = [k for _, k in received[n]]
        assert len(keys) == len(set(keys)), f"subscriber {n} got duplicates"
        assert offsets == sorted(offsets), f"subscriber {n} got changes out of order"
        assert set(keys) == wanted(f)
    assert len(renewals) == len(filters) and all(r["recovered"] for r in renewals)


async def test_the_publisher_sample_reaches_a_server_s_watcher(
    session: CassandraSession, keyspace: str
) -> None:
    import uuid

    from trio_rt_examples.capabilities.change_streams import posts as capability_posts
    from trio_rt_examples.docs import change_samples

    from trio_rt.cassandra import create_schema

    await create_schema(session, keyspace, parts=["streams", "watchers"], tables=[capability_posts])
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    seen: list[ChangeEvent] = []

    async def record(event: ChangeEvent) -> None:
        seen.append(event)
        await trio.lowlevel.checkpoint()

    rows = [{"id": uuid.uuid4(), "category": "news", "title": f"t{i}"} for i in range(3)]
    with redis_on(port), trio.fail_after(GUARD):
        changes = server(Database(session, keyspace), url, "trio_rt", poll_interval=600.0)
        async with changes.manager:
            await changes.watch(capability_posts, callback=record)
            await change_samples.write_posts(session, keyspace, url, rows)
            await wait_until(lambda: len(seen) == 3, GUARD)
    assert [e.data["title"] for e in seen] == ["t0", "t1", "t2"]

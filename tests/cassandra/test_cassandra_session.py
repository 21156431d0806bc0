"""CassandraSession against a real Cassandra 5.0 node (the `cassandra_endpoint` fixture).

Each test works in its own keyspace (random suffix). Timing is never asserted: limits are
deadlock guards, and the tests that need a request to be slower than a deadline (or still
unanswered when they cancel it) retry until it is: a 4 MiB read against a 0.5 ms deadline.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from cassandra import ConsistencyLevel, OperationTimedOut
from cassandra.cluster import Cluster
from cassandra.protocol import SyntaxException

from trio_rt.cassandra import (
    CassandraError,
    CassandraQueryError,
    CassandraSession,
    CassandraTimeout,
    CassandraUnavailable,
    Page,
)
from trio_rt.testing.pytest_plugin import CassandraEndpoint

from ..conftest import count_tasks, wait_until

GUARD = 120  # s: deadlock guard for a whole test body
HEAVY_ROWS = 1000
HEAVY_VALUE = "x" * 4096  # HEAVY_ROWS * 4 KiB: a read big enough to outlast a tiny deadline


async def insert_concurrently(
    session: CassandraSession,
    query: str,
    rows: list[tuple[Any, ...]],
    in_flight: int = 64,
) -> int:
    """Run `query` once per parameter tuple with at most `in_flight` requests outstanding.

    Returns the highest in-flight count seen by the session (it must never exceed the bound).
    """
    pending = iter(rows)
    peak = 0

    async def worker() -> None:
        nonlocal peak
        for params in pending:  # shared iterator: each row goes to one worker
            await session.execute(query, params)
            peak = max(peak, session.stats.in_flight)

    async with trio.open_nursery() as nursery:
        for _ in range(in_flight):
            nursery.start_soon(worker)
    return peak


async def heavy_table(session: CassandraSession, keyspace: str) -> str:
    """A table whose full scan returns ~4 MiB in one page; its SELECT statement."""
    await session.execute(f"CREATE TABLE {keyspace}.heavy (id int PRIMARY KEY, v text)")
    await insert_concurrently(
        session,
        f"INSERT INTO {keyspace}.heavy (id, v) VALUES (?, ?)",
        [(i, HEAVY_VALUE) for i in range(HEAVY_ROWS)],
    )
    return f"SELECT id, v FROM {keyspace}.heavy"


# -- keyspaces ---------------------------------------------------------------------------


async def test_create_and_drop_keyspace(session: CassandraSession) -> None:
    name = "trt_ks_" + uuid.uuid4().hex[:8]
    select = (
        "SELECT keyspace_name, replication FROM system_schema.keyspaces WHERE keyspace_name = ?"
    )
    with trio.fail_after(GUARD):
        await session.create_keyspace(name, replication_factor=1)
        try:
            rows = await session.execute(select, (name,))
            assert len(rows) == 1
            replication = rows[0]["replication"]
            assert replication["class"].endswith("SimpleStrategy")
            assert replication["replication_factor"] == "1"

            await session.create_keyspace(name)  # IF NOT EXISTS: no error
            with pytest.raises(CassandraQueryError, match="already exists") as info:
                await session.create_keyspace(name, if_not_exists=False)
            assert not info.value.transient
        finally:
            await session.drop_keyspace(name)
        assert await session.execute(select, (name,)) == []


@pytest.mark.parametrize(
    "name",
    ["", "1abc", "_abc", "with-dash", "a" * 49, 'x"; DROP KEYSPACE system; --', "ks name", "ké"],
)
async def test_keyspace_name_is_validated(session: CassandraSession, name: str) -> None:
    requests = session.stats.requests
    with pytest.raises(ValueError, match="invalid keyspace name"):
        await session.create_keyspace(name)
    with pytest.raises(ValueError, match="invalid keyspace name"):
        await session.drop_keyspace(name)
    assert session.stats.requests == requests  # nothing was sent


async def test_replication_factor_is_validated(session: CassandraSession) -> None:
    with pytest.raises(ValueError):
        await session.create_keyspace("trt_ok", replication_factor=0)
    # A wrong type is a ValueError like every constructor check (trio_rt/_core/checks.py).
    with pytest.raises(ValueError, match="replication_factor must be a positive integer"):
        await session.create_keyspace("trt_ok", replication_factor="1")  # type: ignore[arg-type]


# -- prepared statements ---------------------------------------------------------------


async def test_prepared_writes_and_reads(session: CassandraSession, keyspace: str) -> None:
    with trio.fail_after(GUARD):
        await session.execute(
            f"CREATE TABLE {keyspace}.users (id uuid PRIMARY KEY, name text, age int)"
        )
        insert = f"INSERT INTO {keyspace}.users (id, name, age) VALUES (?, ?, ?)"
        select = f"SELECT id, name, age FROM {keyspace}.users WHERE id = :id"
        before = session.stats.prepares

        ids = [uuid.uuid4() for _ in range(50)]
        for n, id_ in enumerate(ids):
            assert await session.execute(insert, (id_, f"user {n}", n)) == []
        # A value that would break out of a spliced string is stored verbatim: it is bound.
        evil = uuid.uuid4()
        evil_name = "x'); DROP KEYSPACE " + keyspace + "; --"
        await session.execute(insert, (evil, evil_name, -1))

        for n, id_ in enumerate(ids):
            assert await session.execute(select, {"id": id_}) == [
                {"id": id_, "name": f"user {n}", "age": n}
            ]
        assert await session.execute(select, {"id": evil}) == [
            {"id": evil, "name": evil_name, "age": -1}
        ]

        # 101 executions of two query strings: two PREPAREs, both cached.
        assert session.stats.prepares == before + 2
        assert await session.prepare(insert) is await session.prepare(insert)
        assert session.stats.prepares == before + 2


async def test_concurrent_first_use_prepares_once(session: CassandraSession, keyspace: str) -> None:
    with trio.fail_after(GUARD):
        await session.execute(f"CREATE TABLE {keyspace}.kv (k int PRIMARY KEY, v int)")
        insert = f"INSERT INTO {keyspace}.kv (k, v) VALUES (?, ?)"
        before = session.stats.prepares
        async with trio.open_nursery() as nursery:
            for k in range(100):
                nursery.start_soon(session.execute, insert, (k, k * k))
        assert session.stats.prepares == before + 1
        rows = await session.execute(f"SELECT k, v FROM {keyspace}.kv")
        assert sorted((r["k"], r["v"]) for r in rows) == [(k, k * k) for k in range(100)]


async def test_prepared_cache_is_bounded(cassandra_endpoint: CassandraEndpoint) -> None:
    async with CassandraSession.connect(
        [cassandra_endpoint.host], port=cassandra_endpoint.port, prepared_cache_size=3
    ) as session:
        queries = [
            f"SELECT release_version AS v{i} FROM system.local WHERE key = ?" for i in range(5)
        ]
        for n, query in enumerate(queries):
            assert f"v{n}" in (await session.execute(query, ("local",)))[0]
        assert session.stats.prepared_cached == 3
        before = session.stats.prepares
        await session.execute(queries[-1], ("local",))  # still cached
        assert session.stats.prepares == before
        await session.execute(queries[0], ("local",))  # evicted: prepared again
        assert session.stats.prepares == before + 1


async def test_execute_many_from_one_task(session: CassandraSession, keyspace: str) -> None:
    total, concurrency = 5_000, 32
    with trio.fail_after(GUARD):
        await session.execute(f"CREATE TABLE {keyspace}.bulk (id int PRIMARY KEY, v text)")
        insert = f"INSERT INTO {keyspace}.bulk (id, v) VALUES (?, ?)"
        peak = 0
        done = trio.Event()

        async def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, session.stats.in_flight)
                await trio.lowlevel.checkpoint()

        tasks = count_tasks()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            rows = ((i, f"v{i}") for i in range(total))  # consumed lazily
            assert await session.execute_many(insert, rows, concurrency=concurrency) == total
            done.set()
        assert 1 < peak <= concurrency
        assert count_tasks() == tasks
        got = await session.execute(f"SELECT id, v FROM {keyspace}.bulk")
        assert sorted((r["id"], r["v"]) for r in got) == [(i, f"v{i}") for i in range(total)]
        assert await session.execute_many(insert, []) == 0

        # A server error (null primary key) stops the batch and is raised, mapped.
        bad = [(total + i, "x") for i in range(100)] + [(None, "null key")]
        with pytest.raises(CassandraQueryError, match="execute_many failed") as info:
            await session.execute_many(insert, bad, concurrency=8)
        assert "null" in str(info.value).lower()
        # A bind error too (before anything is sent for that row).
        with pytest.raises(CassandraQueryError, match="bind failed"):
            await session.execute_many(insert, [(1, "a"), ("two", "b")])

        # Cancelled midway: the requests still out are abandoned; nothing is left behind.
        with trio.move_on_after(0.05):
            await session.execute_many(
                insert, ((i, "again") for i in range(10**9)), concurrency=concurrency
            )
        await wait_until(lambda: session.stats.in_flight == 0, limit=GUARD)
        assert count_tasks() == tasks
        assert len(await session.execute(f"SELECT id FROM {keyspace}.bulk WHERE id = ?", (0,))) == 1


# -- paging ----------------------------------------------------------------------------


async def test_paging_over_10000_rows(
    session: CassandraSession, keyspace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    total, page_size, max_in_flight = 10_000, 500, 64
    with trio.fail_after(GUARD):
        await session.execute(
            f"CREATE TABLE {keyspace}.items (bucket int, id int, v text, PRIMARY KEY (bucket, id))"
        )
        peak = await insert_concurrently(
            session,
            f"INSERT INTO {keyspace}.items (bucket, id, v) VALUES (?, ?, ?)",
            [(i % 16, i, f"value {i}") for i in range(total)],
            in_flight=max_in_flight,
        )
        assert 1 <= peak <= max_in_flight

        # While a page request is on the wire (the driver has not received its response yet),
        # another Trio task keeps running: the Trio thread never blocks on the driver. The
        # test's own driver callback (added to every ResponseFuture) tells when a response is in.
        unanswered = 0  # requests sent whose response the driver has not received (any thread)
        lock = threading.Lock()
        driver = session.driver_session
        original = driver.execute_async

        def answered(*_: object) -> None:
            nonlocal unanswered
            with lock:
                unanswered -= 1

        def execute_async(*args: Any, **kwargs: Any) -> Any:
            nonlocal unanswered
            with lock:
                unanswered += 1
            future = original(*args, **kwargs)
            future.add_callbacks(answered, answered)
            return future

        monkeypatch.setattr(driver, "execute_async", execute_async)
        ticks = 0
        ticks_while_on_the_wire = 0
        done = trio.Event()

        async def ticker() -> None:
            nonlocal ticks, ticks_while_on_the_wire
            while not done.is_set():
                ticks += 1
                if unanswered:
                    ticks_while_on_the_wire += 1
                await trio.lowlevel.checkpoint()

        seen: set[int] = set()
        count = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            rows = session.iterate(
                f"SELECT bucket, id, v FROM {keyspace}.items", page_size=page_size
            )
            async for row in rows:
                count += 1
                seen.add(row["id"])
                assert row["v"] == f"value {row['id']}"
            done.set()

        assert count == total
        assert seen == set(range(total))  # no duplicates, nothing missing
        assert rows.pages >= total // page_size
        assert ticks_while_on_the_wire > 0
        assert ticks > rows.pages
        monkeypatch.undo()

        # execute() collects every page, too; and iterate() works with bound values.
        assert (
            len(await session.execute(f"SELECT id FROM {keyspace}.items", page_size=999)) == total
        )
        bucket = [
            r["id"]
            async for r in session.iterate(
                f"SELECT id FROM {keyspace}.items WHERE bucket = ?", (3,), page_size=100
            )
        ]
        assert bucket == [i for i in range(total) if i % 16 == 3]


async def test_fetch_page_hands_out_the_paging_state(
    session: CassandraSession, keyspace: str
) -> None:
    """fetch_page is one page request: the caller keeps the paging state (a web client asking
    for "more"), a new session continues from it, and the last page has none."""
    with trio.fail_after(GUARD):
        await session.execute(f"CREATE TABLE {keyspace}.p (k int, c int, PRIMARY KEY (k, c))")
        await insert_concurrently(
            session, f"INSERT INTO {keyspace}.p (k, c) VALUES (?, ?)", [(1, i) for i in range(25)]
        )
        query = f"SELECT c FROM {keyspace}.p WHERE k = ?"
        first = await session.fetch_page(query, (1,), page_size=10)
        assert isinstance(first, Page)
        assert [r["c"] for r in first.rows] == list(range(10))
        assert isinstance(first.paging_state, bytes)
        got = [r["c"] for r in first.rows]
        state = first.paging_state
        pages = 1
        while state is not None:
            page = await session.fetch_page(query, (1,), paging_state=state, page_size=10)
            got += [r["c"] for r in page.rows]
            state = page.paging_state
            pages += 1
        assert got == list(range(25))
        assert pages in (3, 4)  # a last, empty page is allowed
        # The same state gives the same page again.
        again = await session.fetch_page(query, (1,), paging_state=first.paging_state, page_size=10)
        assert [r["c"] for r in again.rows] == list(range(10, 20))
        # Without params (a simple statement): all in one page, no state.
        whole = await session.fetch_page(f"SELECT c FROM {keyspace}.p WHERE k = 1", page_size=30)
        assert [r["c"] for r in whole.rows] == list(range(25))
        assert whole.paging_state is None
        with pytest.raises(ValueError, match="page_size"):
            await session.fetch_page(query, (1,), page_size=0)


async def test_iteration_survives_cancellation(session: CassandraSession, keyspace: str) -> None:
    """Cancelling __anext__ (pending cancel, or a deadline during a page fetch) loses no row
    and repeats none: the iterator only moves on after a successful fetch."""
    total = 2_000
    with trio.fail_after(GUARD):
        await session.execute(f"CREATE TABLE {keyspace}.t (id int PRIMARY KEY)")
        await insert_concurrently(
            session, f"INSERT INTO {keyspace}.t (id) VALUES (?)", [(i,) for i in range(total)]
        )
        rows = session.iterate(f"SELECT id FROM {keyspace}.t", page_size=300)
        seen: list[int] = []
        cancelled = 0
        attempt = 0
        while True:
            attempt += 1
            with trio.CancelScope() as scope:
                if attempt % 7 == 0:
                    scope.cancel()  # cancelled before __anext__ even starts
                elif attempt % 5 == 0:
                    scope.deadline = trio.current_time() + 0.0002  # may hit a fetch
                try:
                    row = await rows.__anext__()
                except StopAsyncIteration:
                    break
                seen.append(row["id"])
            if scope.cancelled_caught:
                cancelled += 1
        assert cancelled >= attempt // 7
        assert sorted(seen) == list(range(total))
        with pytest.raises(StopAsyncIteration):
            await rows.__anext__()
        # Abandoned page requests settle; the session keeps working.
        await wait_until(lambda: session.stats.in_flight == 0, limit=GUARD)
        assert len(await session.execute(f"SELECT id FROM {keyspace}.t")) == total


# -- timeouts and cancellation ---------------------------------------------------------


async def test_trio_deadline_abandons_the_request(session: CassandraSession, keyspace: str) -> None:
    with trio.fail_after(GUARD):
        query = await heavy_table(session, keyspace)
        tasks = count_tasks()
        abandoned = session.stats.abandoned
        for _ in range(20):  # a 4 MiB read against a 0.5 ms deadline: the first try times out
            with trio.move_on_after(0.0005) as scope:
                await session.execute(query, page_size=HEAVY_ROWS)
            if scope.cancelled_caught:
                break
        assert scope.cancelled_caught
        # The late response is dropped, its slot freed; nothing is left running.
        await wait_until(lambda: session.stats.in_flight == 0, limit=GUARD)
        assert session.stats.abandoned >= abandoned + 1
        assert count_tasks() == tasks
        assert len(await session.execute(query, page_size=HEAVY_ROWS)) == HEAVY_ROWS


async def test_driver_timeout_raises_cassandra_timeout(
    session: CassandraSession, keyspace: str
) -> None:
    with trio.fail_after(GUARD):
        query = await heavy_table(session, keyspace)
        for _ in range(20):
            try:
                await session.execute(query, page_size=HEAVY_ROWS, request_timeout=0.0005)
            except CassandraTimeout as exc:
                error = exc
                break
        else:  # pragma: no cover
            pytest.fail("a 4 MiB read never exceeded a 0.5 ms driver timeout")
        assert isinstance(error, CassandraUnavailable)
        assert error.transient
        assert isinstance(error.__cause__, OperationTimedOut)
        assert error.query == query
        assert "execute failed" in str(error) and "heavy" in str(error)
        await wait_until(lambda: session.stats.in_flight == 0, limit=GUARD)
        assert len(await session.execute(query, page_size=HEAVY_ROWS)) == HEAVY_ROWS


async def test_cancelling_many_requests_leaves_nothing_behind(
    session: CassandraSession, keyspace: str
) -> None:
    n = 16
    with trio.fail_after(GUARD):
        query = await heavy_table(session, keyspace)
        tasks = count_tasks()
        for _ in range(20):
            stats = session.stats
            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(session.execute, query, None)
                # Sending and parking happen without a checkpoint in between, so once all n
                # requests are counted, every task is parked; cancel those still unanswered.
                while session.stats.requests < stats.requests + n:
                    await trio.lowlevel.checkpoint()
                outstanding = session.stats.in_flight - stats.in_flight
                nursery.cancel_scope.cancel()
            await wait_until(lambda: session.stats.in_flight == 0, limit=GUARD)
            assert session.stats.abandoned - stats.abandoned == outstanding
            if outstanding:
                break
        assert outstanding > 0
        assert count_tasks() == tasks
        assert len(await session.execute(query)) == HEAVY_ROWS


async def test_already_cancelled_call_sends_nothing(session: CassandraSession) -> None:
    requests = session.stats.requests
    with trio.CancelScope() as scope:
        scope.cancel()
        await session.execute("SELECT release_version FROM system.local")
    assert scope.cancelled_caught
    assert session.stats.requests == requests


# -- errors ----------------------------------------------------------------------------


async def test_server_errors_are_mapped(session: CassandraSession, keyspace: str) -> None:
    with trio.fail_after(GUARD):
        bad = "SELEKT * FROM nowhere"
        with pytest.raises(CassandraQueryError) as info:
            await session.execute(bad)
        error = info.value
        assert isinstance(error.__cause__, SyntaxException)
        assert "Syntax error" in str(error) and bad in str(error)
        assert error.query == bad and not error.transient

        # The same through a prepare; a failed prepare is not cached (tried again).
        prepares = session.stats.prepares
        for _ in range(2):
            with pytest.raises(CassandraQueryError, match=r"prepare failed.*Syntax error"):
                await session.execute(bad, (1,))
        assert session.stats.prepares == prepares + 2

        with pytest.raises(CassandraQueryError, match="does not exist"):
            await session.execute(f"SELECT * FROM {keyspace}.missing")
        with pytest.raises(CassandraQueryError, match="does not exist"):
            await session.execute(f"SELECT * FROM {keyspace}.missing WHERE k = ?", (1,))

        await session.execute(f"CREATE TABLE {keyspace}.t (k int PRIMARY KEY, v text)")
        insert = f"INSERT INTO {keyspace}.t (k, v) VALUES (?, ?)"
        with pytest.raises(CassandraQueryError, match="bind failed"):
            await session.execute(insert, ("not an int", "v"))
        with pytest.raises(CassandraQueryError, match="bind failed"):
            await session.execute(insert, (1, "v", "one too many"))

        # The long query text is cut in the message, kept whole on the exception.
        long_bad = "SELECT " + ", ".join(f"col{i}" for i in range(100)) + f" FROM {keyspace}.t"
        with pytest.raises(CassandraQueryError) as info:
            await session.execute(long_bad)
        assert info.value.query == long_bad
        assert "..." in str(info.value) and long_bad not in str(info.value)


async def test_unavailable_is_transient(session: CassandraSession) -> None:
    """RF 3 on a one-node cluster: reading at ALL cannot reach enough replicas."""
    name = "trt_rf3_" + uuid.uuid4().hex[:8]
    with trio.fail_after(GUARD):
        await session.create_keyspace(name, replication_factor=3)
        try:
            await session.execute(f"CREATE TABLE {name}.t (k int PRIMARY KEY)")
            with pytest.raises(CassandraUnavailable, match="Cannot achieve consistency") as info:
                await session.execute(
                    f"SELECT k FROM {name}.t WHERE k = ?", (1,), consistency=ConsistencyLevel.ALL
                )
            assert info.value.transient
            assert not isinstance(info.value, CassandraTimeout)
            # The default consistency (LOCAL_QUORUM = 2 of 3) fails the same way; ONE works.
            with pytest.raises(CassandraUnavailable):
                await session.execute(f"SELECT k FROM {name}.t WHERE k = ?", (1,))
            assert (
                await session.execute(
                    f"SELECT k FROM {name}.t WHERE k = ?", (1,), consistency=ConsistencyLevel.ONE
                )
                == []
            )
        finally:
            await session.drop_keyspace(name)


# -- concurrency and lifecycle ---------------------------------------------------------


async def test_many_tasks_execute_concurrently(
    cassandra_endpoint: CassandraEndpoint,
) -> None:
    max_in_flight = 8
    async with CassandraSession.connect(
        [cassandra_endpoint.host], port=cassandra_endpoint.port, max_in_flight=max_in_flight
    ) as session:
        keyspace = "trt_" + uuid.uuid4().hex[:12]
        with trio.fail_after(GUARD):
            await session.create_keyspace(keyspace)
            try:
                await session.execute(
                    f"CREATE TABLE {keyspace}.c (task int, n int, PRIMARY KEY (task, n))"
                )
                insert = f"INSERT INTO {keyspace}.c (task, n) VALUES (?, ?)"
                select = f"SELECT n FROM {keyspace}.c WHERE task = ?"
                peak = 0

                async def client(task: int) -> None:
                    nonlocal peak
                    for n in range(10):
                        await session.execute(insert, (task, n))
                        peak = max(peak, session.stats.in_flight)
                    assert [r["n"] for r in await session.execute(select, (task,))] == list(
                        range(10)
                    )

                async with trio.open_nursery() as nursery:
                    for task in range(200):
                        nursery.start_soon(client, task)
                assert 1 <= peak <= max_in_flight
                assert session.stats.in_flight == 0
            finally:
                await session.drop_keyspace(keyspace)


async def test_close_wakes_waiting_calls(cassandra_endpoint: CassandraEndpoint) -> None:
    outcomes: list[BaseException | None] = []
    async with CassandraSession.connect(
        [cassandra_endpoint.host], port=cassandra_endpoint.port, max_in_flight=2
    ) as session:
        with trio.fail_after(GUARD):

            async def call() -> None:
                try:
                    await session.execute("SELECT * FROM system_schema.columns")
                except trio.ClosedResourceError as exc:
                    outcomes.append(exc)
                else:
                    outcomes.append(None)

            async with trio.open_nursery() as nursery:
                for _ in range(6):  # 2 in flight, 4 waiting for a slot
                    nursery.start_soon(call)
                while session.stats.requests < 2:
                    await trio.lowlevel.checkpoint()
                await session.aclose()
        assert session.closed
        with pytest.raises(trio.ClosedResourceError):
            await session.execute("SELECT release_version FROM system.local")
    assert len(outcomes) == 6
    assert sum(isinstance(o, trio.ClosedResourceError) for o in outcomes) >= 4


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung node)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


@pytest.fixture
def shutdowns(monkeypatch: pytest.MonkeyPatch) -> list[Cluster]:
    """Records every Cluster.shutdown() call (from any thread)."""
    calls: list[Cluster] = []
    original = Cluster.shutdown

    def shutdown(self: Cluster) -> None:
        calls.append(self)
        original(self)

    monkeypatch.setattr(Cluster, "shutdown", shutdown)
    return calls


async def test_connect_timeout(silent_port: int, shutdowns: list[Cluster]) -> None:
    with trio.fail_after(GUARD):
        with pytest.raises(CassandraUnavailable, match=r"connect to 127\.0\.0\.1"):
            async with CassandraSession.connect(
                ["127.0.0.1"], port=silent_port, connect_timeout=0.5
            ):
                pytest.fail("connected to a port that never answers")  # pragma: no cover
        # The abandoned attempt's Cluster is shut down once the driver gives up.
        await wait_until(lambda: len(shutdowns) >= 1, limit=GUARD)


async def test_cancelled_connect_shuts_the_cluster_down(
    silent_port: int, shutdowns: list[Cluster]
) -> None:
    with trio.fail_after(GUARD):
        with trio.move_on_after(0.2) as scope:
            # connect_timeout also bounds the driver's own attempt: it gives up after 1 s.
            async with CassandraSession.connect(
                ["127.0.0.1"], port=silent_port, connect_timeout=1.0
            ):
                pytest.fail("connected to a port that never answers")  # pragma: no cover
        assert scope.cancelled_caught
        await wait_until(lambda: len(shutdowns) >= 1, limit=GUARD)


async def test_connect_abandoned_after_success_is_shut_down(
    cassandra_endpoint: CassandraEndpoint, shutdowns: list[Cluster]
) -> None:
    """The connection succeeds after its caller gave up: nobody owns that Cluster, so the
    session shuts it down in the background."""
    with trio.fail_after(GUARD):
        for _ in range(5):  # connecting takes several round trips: 1 ms is never enough
            with trio.move_on_after(0.001) as scope:
                async with CassandraSession.connect(
                    [cassandra_endpoint.host], port=cassandra_endpoint.port
                ):
                    pass  # pragma: no cover
            if scope.cancelled_caught:
                break
        assert scope.cancelled_caught
        await wait_until(lambda: len(shutdowns) >= 1, limit=GUARD)


async def test_connect_refused() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with trio.fail_after(GUARD), pytest.raises(CassandraUnavailable, match="refused") as info:
        async with CassandraSession.connect(["127.0.0.1"], port=port):
            pass  # pragma: no cover
    assert isinstance(info.value, CassandraError) and info.value.query is None

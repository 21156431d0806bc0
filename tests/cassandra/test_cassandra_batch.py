"""CassandraSession.execute_batch against a real Cassandra 5.0 node (own keyspace per test)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
import trio

from trio_rt.cassandra import CassandraQueryError, CassandraSession

GUARD = 120  # s: deadlock guard for a whole test body


@pytest.fixture
async def keyspace(session: CassandraSession) -> AsyncIterator[str]:
    name = "trt_" + uuid.uuid4().hex[:12]
    await session.create_keyspace(name)
    await session.execute(f"CREATE TABLE {name}.a (k int PRIMARY KEY, v text)")
    await session.execute(f"CREATE TABLE {name}.b (k int, c int, v text, PRIMARY KEY (k, c))")
    yield name
    await session.drop_keyspace(name)


async def test_logged_batch_writes_all_statements(session: CassandraSession, keyspace: str) -> None:
    with trio.fail_after(GUARD):
        rows = await session.execute_batch(
            [
                (f"INSERT INTO {keyspace}.a (k, v) VALUES (?, ?)", (1, "one")),
                (
                    f"INSERT INTO {keyspace}.b (k, c, v) VALUES (:k, :c, :v)",
                    {"k": 7, "c": 1, "v": "x"},
                ),
                (f"INSERT INTO {keyspace}.b (k, c, v) VALUES (?, ?, ?)", (8, 2, "y")),
            ]
        )
        assert rows == []
        assert await session.execute(f"SELECT k, v FROM {keyspace}.a") == [{"k": 1, "v": "one"}]
        got = await session.execute(f"SELECT k, c, v FROM {keyspace}.b")
        assert sorted((r["k"], r["c"], r["v"]) for r in got) == [(7, 1, "x"), (8, 2, "y")]
        # Unlogged works too (same partition here).
        await session.execute_batch(
            [(f"UPDATE {keyspace}.b SET v = ? WHERE k = ? AND c = ?", ("z", 7, c)) for c in (1, 2)],
            logged=False,
        )
        got = await session.execute(f"SELECT c, v FROM {keyspace}.b WHERE k = ?", (7,))
        assert got == [{"c": 1, "v": "z"}, {"c": 2, "v": "z"}]


async def test_batch_with_a_failing_statement_writes_nothing(
    session: CassandraSession, keyspace: str
) -> None:
    with trio.fail_after(GUARD):
        good = (f"INSERT INTO {keyspace}.a (k, v) VALUES (?, ?)", (1, "one"))
        insert_b = f"INSERT INTO {keyspace}.b (k, c, v) VALUES (?, ?, ?)"
        # Refused before sending: an unknown table (prepare), a wrong Python type (bind).
        with pytest.raises(CassandraQueryError, match="nowhere"):
            await session.execute_batch(
                [good, (f"INSERT INTO {keyspace}.nowhere (k) VALUES (?)", (1,))]
            )
        with pytest.raises(CassandraQueryError, match="bind failed"):
            await session.execute_batch([good, (insert_b, ("x", 1, "v"))])
        # Refused by the coordinator while executing the batch: a null partition key in the
        # last statement, and a batch over batch_size_fail_threshold (50 KiB by default).
        requests = session.stats.requests
        with pytest.raises(CassandraQueryError, match=r"(?i)null"):
            await session.execute_batch([good, (insert_b, (3, 1, "v")), (insert_b, (None, 1, "v"))])
        big = "x" * 4096
        with pytest.raises(CassandraQueryError, match=r"(?i)batch"):
            await session.execute_batch([good] + [(insert_b, (2, c, big)) for c in range(40)])
        assert session.stats.requests == requests + 2  # both were sent, and refused whole
        assert await session.execute(f"SELECT k FROM {keyspace}.a") == []
        assert await session.execute(f"SELECT k FROM {keyspace}.b") == []


async def test_batch_timestamp_is_the_write_time(session: CassandraSession, keyspace: str) -> None:
    with trio.fail_after(GUARD):
        stamp = 1_600_000_000_123_456
        await session.execute_batch(
            [
                (f"INSERT INTO {keyspace}.a (k, v) VALUES (?, ?)", (1, "one")),
                (f"INSERT INTO {keyspace}.b (k, c, v) VALUES (?, ?, ?)", (1, 1, "x")),
            ],
            timestamp=stamp,
        )
        rows = await session.execute(f"SELECT WRITETIME(v) AS w FROM {keyspace}.a WHERE k = 1")
        assert rows == [{"w": stamp}]
        rows = await session.execute(f"SELECT WRITETIME(v) AS w FROM {keyspace}.b WHERE k = 1")
        assert rows == [{"w": stamp}]
        # An older timestamp loses against the stored one (last write wins by timestamp).
        await session.execute_batch(
            [(f"UPDATE {keyspace}.a SET v = ? WHERE k = ?", ("older", 1))], timestamp=stamp - 1
        )
        assert await session.execute(f"SELECT v FROM {keyspace}.a") == [{"v": "one"}]
        # The override is per request: the next plain write gets a current timestamp again.
        before = int(time.time() * 1e6) - 60_000_000
        await session.execute(f"INSERT INTO {keyspace}.a (k, v) VALUES (?, ?)", (2, "two"))
        rows = await session.execute(f"SELECT WRITETIME(v) AS w FROM {keyspace}.a WHERE k = 2")
        assert rows[0]["w"] > before


async def test_conditional_batch_returns_applied(session: CassandraSession, keyspace: str) -> None:
    with trio.fail_after(GUARD):
        insert = f"INSERT INTO {keyspace}.b (k, c, v) VALUES (?, ?, ?) IF NOT EXISTS"
        rows = await session.execute_batch([(insert, (5, 1, "a")), (insert, (5, 2, "b"))])
        assert rows[0]["[applied]"] is True
        rows = await session.execute_batch([(insert, (5, 1, "again"))])
        assert rows[0]["[applied]"] is False


@pytest.mark.parametrize(
    ("statements", "options", "error"),
    [
        ([], {}, ValueError),
        (["INSERT"], {}, TypeError),
        ([("SELECT now() FROM system.local", ())], {"timestamp": -1}, ValueError),
        ([("SELECT now() FROM system.local", ())], {"timestamp": 2**63}, ValueError),
        ([("SELECT now() FROM system.local", ())], {"timestamp": 1.5}, TypeError),
        ([("SELECT now() FROM system.local", ())], {"timestamp": True}, TypeError),
    ],
)
async def test_batch_arguments_are_checked_before_sending(
    session: CassandraSession, statements: list[object], options: dict[str, object], error: type
) -> None:
    requests = session.stats.requests
    with pytest.raises(error):
        await session.execute_batch(statements, **options)  # type: ignore[arg-type]
    assert session.stats.requests == requests


async def test_cancelled_batch_sends_nothing(session: CassandraSession, keyspace: str) -> None:
    insert = f"INSERT INTO {keyspace}.a (k, v) VALUES (?, ?)"
    await session.prepare(insert)
    requests = session.stats.requests
    with trio.CancelScope() as scope:
        scope.cancel()
        await session.execute_batch([(insert, (1, "x"))])
    assert scope.cancelled_caught
    assert session.stats.requests == requests
    assert await session.execute(f"SELECT k FROM {keyspace}.a") == []

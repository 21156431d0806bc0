"""The `WatchPositions` contract, run against every implementation (memory, and Cassandra on
the real node), and `ChangeStreamManager` keeping named watchers' positions through the seam
only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from trio_rt import MemoryWatchPositions, WatchPositions, WebSocketManager
from trio_rt._core.protocol import StreamPosition
from trio_rt._engine.changes import ChangeEvent, ChangeStreamManager
from trio_rt.cassandra import (
    CassandraSession,
    CassandraWatchPositions,
    Column,
    Database,
    Table,
    create_schema,
)

from ..conftest import wait_until

GUARD = 60.0  # deadlock protection only


@pytest.fixture(params=["memory", "cassandra"])
async def positions(
    request: pytest.FixtureRequest, session: CassandraSession, keyspace: str
) -> AsyncIterator[WatchPositions]:
    if request.param == "memory":
        yield MemoryWatchPositions()
        return
    cassandra = CassandraWatchPositions(session, keyspace)
    await cassandra.create_schema()
    yield cassandra


async def test_contract(positions: WatchPositions) -> None:
    await positions.create_schema()  # again: idempotent, keeps what is there
    assert await positions.load("indexer") is None
    await positions.save("indexer", StreamPosition(5, "e1"))
    assert await positions.load("indexer") == StreamPosition(5, "e1")
    # A later save replaces the position, epoch included.
    await positions.save("indexer", StreamPosition(9, "e1"))
    await positions.save("indexer", StreamPosition(2, "e2"))
    assert await positions.load("indexer") == StreamPosition(2, "e2")
    # Names are independent and stored as given: quotes, spaces, non-ASCII, 200 characters.
    odd = ["it's; DROP TABLE x --", "Indexer", "ünïcødé 名前", "n" * 200]
    for n, name in enumerate(odd):
        await positions.save(name, StreamPosition(100 + n, "e3"))
    for n, name in enumerate(odd):
        assert await positions.load(name) == StreamPosition(100 + n, "e3")
    assert await positions.load("indexer") == StreamPosition(2, "e2")
    assert await positions.load("indexer ") is None
    await positions.create_schema()
    assert await positions.load("indexer") == StreamPosition(2, "e2")
    # Offsets up to the protocol's maximum (2^53) survive the round trip.
    await positions.save("big", StreamPosition(2**53, "e4"))
    assert await positions.load("big") == StreamPosition(2**53, "e4")


async def test_cassandra_positions_are_shared_by_every_server_of_the_keyspace(
    session: CassandraSession, keyspace: str
) -> None:
    made = await create_schema(session, keyspace, parts=("watchers",))
    assert made == [CassandraWatchPositions.TABLE]
    await CassandraWatchPositions(session, keyspace).save("w", StreamPosition(7, "e"))
    assert await CassandraWatchPositions(session, keyspace).load("w") == StreamPosition(7, "e")


def test_cassandra_positions_check_the_keyspace_name() -> None:
    for bad in ("", "Upper", "a-b", "ks; DROP", "x" * 49):
        with pytest.raises(ValueError, match="keyspace"):
            CassandraWatchPositions(None, bad)  # type: ignore[arg-type]


class Recorder:
    def __init__(self) -> None:
        self.ids: list[int] = []

    async def __call__(self, event: ChangeEvent) -> None:
        self.ids.append(event.data["id"])
        await trio.lowlevel.checkpoint()


async def test_a_named_watcher_keeps_its_position_in_the_given_positions(
    session: CassandraSession, keyspace: str
) -> None:
    """`positions=` replaces the Cassandra table: no trio_rt_watch_positions table exists in
    this keyspace, so a manager still reading or writing it would fail (and retry forever)."""
    table = Table("items", [Column("id", "int"), Column("v", "text")], partition_key="id")
    await create_schema(session, keyspace, parts=("streams",), tables=[table])
    db = Database(session, keyspace)
    positions = MemoryWatchPositions()
    seen = Recorder()

    async def run_server(ids: range) -> StreamPosition | None:
        manager = WebSocketManager(host="127.0.0.1", port=0, heartbeat_interval=None)
        changes = ChangeStreamManager(db, manager, positions=positions)
        db.capture = changes.changelog
        await changes.create_schema()  # streams are there; the memory positions need nothing
        with trio.fail_after(GUARD):
            async with manager:
                await changes.watch(table, callback=seen, name="indexer")
                for i in ids:
                    await db.insert(table, {"id": i, "v": "x"})
                await wait_until(lambda: len(seen.ids) >= ids.stop, GUARD)
        db.capture = None
        # A stopped watcher has saved the position of its last finished callback.
        return await positions.load("indexer")

    first = await run_server(range(0, 3))
    assert first is not None and first.offset == 3
    second = await run_server(range(3, 5))
    assert seen.ids == [0, 1, 2, 3, 4]  # resumed from the saved position: no repeat, no loss
    assert second is not None and second.offset == 5 and second.epoch == first.epoch
    rows = await session.execute(
        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?", (keyspace,)
    )
    assert CassandraWatchPositions.TABLE not in {r["table_name"] for r in rows}

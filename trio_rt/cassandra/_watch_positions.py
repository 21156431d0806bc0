"""`CassandraWatchPositions`: named change watchers' positions in a Cassandra table (the
`WatchPositions` seam of trio_rt/_engine/watch_positions.py)."""

from __future__ import annotations

from .._core.protocol import StreamPosition
from .._engine.watch_positions import WatchPositions
from ._session import CassandraSession
from ._types import check_name

__all__ = ["CassandraWatchPositions"]


class CassandraWatchPositions(WatchPositions):
    """Table ``trio_rt_watch_positions`` (name text PRIMARY KEY, epoch text, pos bigint) in
    `keyspace`: one row per named watcher, shared by every server of the keyspace. Call
    `create_schema()` once (idempotent; also ``create_schema(..., parts=("watchers",))``).
    Names and positions are bound values, never part of the CQL text. Errors are
    `CassandraSession`'s."""

    #: the table's name, in `keyspace`
    TABLE = "trio_rt_watch_positions"

    def __init__(self, session: CassandraSession, keyspace: str) -> None:
        self.session = session
        self.keyspace = check_name(keyspace, "keyspace")
        table = f"{keyspace}.{self.TABLE}"
        self._create = (
            f"CREATE TABLE IF NOT EXISTS {table} (name text PRIMARY KEY, epoch text, pos bigint)"
        )
        self._select = f"SELECT epoch, pos FROM {table} WHERE name = ?"
        self._insert = f"INSERT INTO {table} (name, epoch, pos) VALUES (?, ?, ?)"

    async def create_schema(self) -> None:
        await self.session.execute(self._create)

    async def load(self, name: str) -> StreamPosition | None:
        rows = await self.session.execute(self._select, (name,))
        return StreamPosition(rows[0]["pos"], rows[0]["epoch"]) if rows else None

    async def save(self, name: str, position: StreamPosition) -> None:
        await self.session.execute(self._insert, (name, position.epoch, position.offset))

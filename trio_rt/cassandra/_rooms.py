"""CassandraRoomStore: persistent rooms' settings in a Cassandra table."""

from __future__ import annotations

import re

from .._engine.room_store import RoomSettings, RoomStore
from ._session import CassandraSession

__all__ = ["CassandraRoomStore"]

_IDENT = re.compile(r"[a-z][a-z0-9_]{0,47}")


class CassandraRoomStore(RoomStore):
    """Table ``trio_rt_rooms`` (name PRIMARY KEY, max_users, moderators set<text>, private) in
    `keyspace`. Call `create_schema()` once (idempotent). `load` reads the whole table: it is
    meant for hundreds or thousands of persistent rooms, not millions."""

    def __init__(self, session: CassandraSession, keyspace: str) -> None:
        if not _IDENT.fullmatch(keyspace):
            raise ValueError(f"invalid keyspace name {keyspace!r}")
        self.session = session
        self.keyspace = keyspace

    async def create_schema(self) -> None:
        await self.session.execute(
            f"CREATE TABLE IF NOT EXISTS {self.keyspace}.trio_rt_rooms ("
            "name text PRIMARY KEY, max_users int, moderators set<text>, private boolean)"
        )

    async def load(self) -> list[RoomSettings]:
        out = []
        async for row in self.session.iterate(
            f"SELECT name, max_users, moderators, private FROM {self.keyspace}.trio_rt_rooms",
            page_size=1000,
        ):
            moderators = frozenset(row["moderators"] or ())
            private = bool(row["private"])
            out.append(RoomSettings(row["name"], row["max_users"], moderators, private))
        return out

    async def save(self, settings: RoomSettings) -> None:
        await self.session.execute(
            f"INSERT INTO {self.keyspace}.trio_rt_rooms (name, max_users, moderators, private) "
            "VALUES (?, ?, ?, ?)",
            (settings.name, settings.max_users, set(settings.moderators), settings.private),
        )

    async def delete(self, name: str) -> None:
        await self.session.execute(
            f"DELETE FROM {self.keyspace}.trio_rt_rooms WHERE name = ?", (name,)
        )

"""create_schema: every table trio_rt keeps in Cassandra, created in one call (deploy scripts,
``trio-rt schema create``), without building servers or managers.

Parts (all by default):

- ``streams``: ``trio_rt_stream_entries`` and ``trio_rt_stream_heads`` (`CassandraStreamStore`:
  room history on Cassandra, change streams);
- ``watchers``: ``trio_rt_watch_positions`` (`CassandraWatchPositions`: named change watchers'
  positions);
- ``rooms``: ``trio_rt_rooms`` (`CassandraRoomStore`: persistent rooms' settings);
- ``permissions``: ``trio_rt_permissions`` (`CassandraPermissionStore`, its default table name).

Every statement is ``CREATE TABLE IF NOT EXISTS``: running it again changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._database import Database
from ._permissions import CassandraPermissionStore
from ._rooms import CassandraRoomStore
from ._session import CassandraSession
from ._streams import CassandraStreamStore
from ._table import Table
from ._types import check_name
from ._watch_positions import CassandraWatchPositions

__all__ = ["SCHEMA_PARTS", "create_schema"]

SCHEMA_PARTS = ("streams", "watchers", "rooms", "permissions")


async def keyspace_exists(session: CassandraSession, keyspace: str) -> bool:
    rows = await session.execute(
        "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?", (keyspace,)
    )
    return bool(rows)


async def create_schema(
    session: CassandraSession,
    keyspace: str,
    *,
    parts: Iterable[str] = SCHEMA_PARTS,
    tables: Iterable[Table] = (),
    replication_factor: int | None = None,
) -> list[str]:
    """Create trio_rt's tables (and the app's `tables`) in `keyspace`; returns the names of
    the tables it made sure of, in order. Idempotent.

    `parts` selects among ``SCHEMA_PARTS`` (module docstring). `tables` are the app's own
    `Table` definitions (``Database.create_table`` for each: an existing table is left as it
    is). With `replication_factor`, the keyspace is created if missing (``SimpleStrategy``);
    without it, a missing keyspace is an error.

    Raises ``ValueError`` before sending anything for an invalid keyspace name (lower-case
    letter, then lower-case letters, digits or ``_``; 48 at most), an unknown part or a bad
    replication factor, and ``LookupError`` when the keyspace does not exist (and
    `replication_factor` is None). Cassandra errors propagate (``CassandraError``).
    """
    check_name(keyspace, "keyspace")
    wanted = list(dict.fromkeys(parts))
    unknown = [p for p in wanted if p not in SCHEMA_PARTS]
    if unknown:
        raise ValueError(
            f"unknown schema part(s) {', '.join(map(repr, unknown))}: "
            f"choose among {', '.join(SCHEMA_PARTS)}"
        )
    app_tables = list(tables)
    for table in app_tables:
        if not isinstance(table, Table):
            raise TypeError(f"tables must be Table definitions, got {type(table).__name__}")
    if replication_factor is not None:  # checked there, before any request
        await session.create_keyspace(keyspace, replication_factor)
    elif not await keyspace_exists(session, keyspace):
        raise LookupError(
            f"keyspace {keyspace!r} does not exist: create it first, or give a replication "
            "factor to have it created"
        )
    made: list[str] = []
    if "streams" in wanted:
        await CassandraStreamStore(session, keyspace).create_schema()
        made += ["trio_rt_stream_entries", "trio_rt_stream_heads"]
    if "watchers" in wanted:
        await CassandraWatchPositions(session, keyspace).create_schema()
        made.append(CassandraWatchPositions.TABLE)
    if "rooms" in wanted:
        await CassandraRoomStore(session, keyspace).create_schema()
        made.append("trio_rt_rooms")
    if "permissions" in wanted:
        permissions = CassandraPermissionStore(session, keyspace)
        await permissions.create_table()
        made.append(permissions.table.partition(".")[2])
    db = Database(session, keyspace)
    for table in app_tables:
        await db.create_table(table)
        made.append(table.name)
    return made

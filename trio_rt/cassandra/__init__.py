"""Cassandra for Trio: :class:`CassandraSession` over cassandra-driver (``trio_rt[cassandra]``).

```python
from trio_rt.cassandra import CassandraSession

async with CassandraSession.connect(["127.0.0.1"], port=9042) as session:
    await session.create_keyspace("app")
    await session.execute("CREATE TABLE IF NOT EXISTS app.t (k int PRIMARY KEY, v text)")
    await session.execute("INSERT INTO app.t (k, v) VALUES (?, ?)", (1, "one"))
    rows = await session.execute("SELECT k, v FROM app.t WHERE k = ?", (1,))
    async for row in session.iterate("SELECT k, v FROM app.t", page_size=1000):
        ...
```

The model layer (:class:`Table`, :class:`Database`) builds the CQL from checked table
definitions and captures changes through a :class:`ChangeCapture`. :func:`create_schema`
creates every table trio_rt keeps in Cassandra (also ``trio-rt schema create``). See
docs/cassandra.md.
"""

try:  # the `cassandra` extra: say so instead of a bare "No module named 'cassandra'"
    import cassandra as _driver  # noqa: F401
except ModuleNotFoundError as exc:
    from .._extras import missing_extra_error

    raise missing_extra_error("trio_rt.cassandra", "cassandra", exc) from exc

from ._capture import CapturedWrite, Change, ChangeCapture
from ._cdc import CdcClaims, CdcSource, OutboxClaims
from ._database import Database
from ._errors import CassandraError, CassandraQueryError, CassandraTimeout, CassandraUnavailable
from ._permissions import CassandraPermissionStore
from ._rooms import CassandraRoomStore
from ._schema import SCHEMA_PARTS, create_schema
from ._session import CassandraSession, CassandraStats, Page, Params, Row, RowIterator
from ._sources import Cdc, ChangeSource, Outbox
from ._streams import CassandraStreamStore
from ._table import Column, Table
from ._watch_positions import CassandraWatchPositions

__all__ = [
    "SCHEMA_PARTS",
    "CapturedWrite",
    "CassandraError",
    "CassandraPermissionStore",
    "CassandraQueryError",
    "CassandraRoomStore",
    "CassandraSession",
    "CassandraStats",
    "CassandraStreamStore",
    "CassandraTimeout",
    "CassandraUnavailable",
    "CassandraWatchPositions",
    "Cdc",
    "CdcClaims",
    "CdcSource",
    "Change",
    "ChangeCapture",
    "ChangeSource",
    "Column",
    "Database",
    "Outbox",
    "OutboxClaims",
    "Page",
    "Params",
    "Row",
    "RowIterator",
    "Table",
    "create_schema",
]

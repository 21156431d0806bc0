"""`Database`: writes and reads for the tables of one keyspace over a `CassandraSession`.

Identifiers come only from the :class:`Table`; values are always bound (``?`` markers,
prepared statements), never spliced into the CQL text. Bad input raises ``ValueError`` /
``TypeError`` naming the column, before any request is sent. With a :class:`ChangeCapture`
(:mod:`._capture`), each insert/update/delete is one logged batch with the capture's
statements.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

from .._core.checks import require_positive_ints
from ._capture import CapturedWrite, Change, ChangeCapture
from ._session import CassandraSession, Row, RowIterator
from ._table import Table
from ._types import MAX_TTL, check_name, quote

__all__ = ["Database"]

_WHERE_OPS = {"eq": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


class Database:
    """Tables of one keyspace over a :class:`CassandraSession`: the model layer's entry point.

    The keyspace must exist (``session.create_keyspace``) and be named like a table
    (``[a-z][a-z0-9_]{0,47}``). All methods validate their input completely before sending
    anything; requests raise what :class:`CassandraSession` raises.
    """

    def __init__(
        self,
        session: CassandraSession,
        keyspace: str,
        *,
        capture: ChangeCapture | None = None,
    ) -> None:
        self.session = session
        self.keyspace = check_name(keyspace, "keyspace")
        self.capture = capture

    def _table(self, table: Table) -> str:
        if not isinstance(table, Table):
            raise TypeError(f"expected a Table, got {type(table).__name__}")
        return f"{quote(self.keyspace)}.{quote(table.name)}"

    async def create_table(self, table: Table) -> None:
        """``CREATE TABLE IF NOT EXISTS`` for `table` (an existing table is left as it is,
        even if its definition differs)."""
        name = self._table(table)
        columns = ", ".join(f"{quote(c.name)} {c.cql_type}" for c in table.columns.values())
        partition = ", ".join(quote(c) for c in table.partition_key)
        key = ", ".join([f"({partition})", *(quote(c) for c in table.clustering_key)])
        options = []
        if table.clustering_key:
            order = ", ".join(f"{quote(c)} {d}" for c, d in table.clustering_order.items())
            options.append(f"CLUSTERING ORDER BY ({order})")
        if table.default_ttl is not None:
            options.append(f"default_time_to_live = {int(table.default_ttl)}")
        cql = f"CREATE TABLE IF NOT EXISTS {name} ({columns}, PRIMARY KEY ({key}))"
        if options:
            cql += " WITH " + " AND ".join(options)
        await self.session.execute(cql)

    # -- writes -----------------------------------------------------------------------------

    async def insert(
        self, table: Table, values: Mapping[str, Any], *, ttl: int | None = None
    ) -> Change | None:
        """``INSERT`` a row (an upsert, as always in Cassandra). `values` must hold every
        primary key column (not ``None``); other columns are optional. Returns the
        :class:`Change` when a capture is set, else ``None``. With ``table.capture_full_rows``
        and a capture, an insert of some of the columns reads the row first, as
        :meth:`update` does."""
        name = self._table(table)
        row = table.normalize_values(values)
        key = table.normalize_key({k: v for k, v in values.items() if k in table.primary_key})
        using, params = _using(ttl)
        columns = list(row)
        cql = (
            f"INSERT INTO {name} ({', '.join(quote(c) for c in columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)}){using}"
        )
        change = Change(table.name, "insert", key, await self._full_row(table, key, row), table)
        return await self._write(cql, [*(row[c] for c in columns), *params], change)

    async def update(
        self,
        table: Table,
        key: Mapping[str, Any],
        values: Mapping[str, Any],
        *,
        ttl: int | None = None,
    ) -> Change | None:
        """``UPDATE ... SET`` non-key columns of the row at `key` (the full primary key).

        Like every Cassandra update it creates the row if it does not exist. A ``None``
        value deletes that cell. Returns the :class:`Change` when a capture is set. With
        ``table.capture_full_rows`` and a capture, the row is read first (unless `values` sets
        every column) and the change's ``data`` is that row merged with `values`: a write by
        someone else between the read and this write is not reflected (the data written is
        exactly `values` either way).
        """
        name = self._table(table)
        key_values = table.normalize_key(key)
        changed = table.normalize_values(values, allow_key=False)
        if not changed:
            raise ValueError(f"update of {table.name}: no column to set")
        using, params = _using(ttl)
        sets = ", ".join(f"{quote(c)} = ?" for c in changed)
        where = " AND ".join(f"{quote(c)} = ?" for c in key_values)
        cql = f"UPDATE {name}{using} SET {sets} WHERE {where}"
        data = await self._full_row(table, key_values, {**key_values, **changed})
        change = Change(table.name, "update", key_values, data, table)
        bound = [*params, *changed.values(), *key_values.values()]
        return await self._write(cql, bound, change)

    async def delete(self, table: Table, key: Mapping[str, Any]) -> Change | None:
        """``DELETE`` the row at `key` (the full primary key). Returns the :class:`Change`
        when a capture is set: its ``data`` is the key, or with ``table.capture_full_rows``
        the row as read just before the delete (the last known row; the same race as
        :meth:`update`)."""
        name = self._table(table)
        key_values = table.normalize_key(key)
        where = " AND ".join(f"{quote(c)} = ?" for c in key_values)
        data = dict(key_values)
        if table.capture_full_rows and self.capture is not None:
            data = {**(await self.get(table, key_values) or {}), **key_values}
        change = Change(table.name, "delete", key_values, data, table)
        return await self._write(
            f"DELETE FROM {name} WHERE {where}", list(key_values.values()), change
        )

    async def _full_row(
        self, table: Table, key: dict[str, Any], written: dict[str, Any]
    ) -> dict[str, Any]:
        """`written` (key and columns written), completed with the row's other columns as read
        now (none for a row that does not exist yet), for a captured write to a
        ``capture_full_rows`` table. No read when `written` already holds every column, or
        without a capture."""
        if (
            not table.capture_full_rows
            or self.capture is None
            or len(written) == len(table.columns)
        ):
            return written
        current = await self.get(table, key)
        return {**(current or {}), **written}

    async def _write(self, cql: str, params: list[Any], change: Change) -> Change | None:
        capture = self.capture
        if capture is None:
            await self.session.execute(cql, params)
            return None
        write = await capture.prepare(change)
        if not isinstance(write, CapturedWrite):
            raise TypeError(
                f"ChangeCapture.prepare must return a CapturedWrite, got {type(write).__name__}"
            )
        try:
            await self.session.execute_batch(
                [(cql, params), *write.statements], logged=True, timestamp=write.timestamp
            )
        except BaseException as exc:
            capture.failed(change, write, exc)
            raise
        capture.committed(change, write)
        return change

    # -- reads ------------------------------------------------------------------------------

    async def get(self, table: Table, key: Mapping[str, Any]) -> Row | None:
        """The row at `key` (the full primary key), or ``None``."""
        name = self._table(table)
        key_values = table.normalize_key(key)
        columns = ", ".join(quote(c) for c in table.columns)
        where = " AND ".join(f"{quote(c)} = ?" for c in key_values)
        rows = await self.session.execute(
            f"SELECT {columns} FROM {name} WHERE {where}", list(key_values.values())
        )
        return table.from_driver(rows[0]) if rows else None

    def query(
        self,
        table: Table,
        partition: Mapping[str, Any],
        *,
        where: Mapping[str, Mapping[str, Any]] | None = None,
        order: Literal["asc", "desc"] | None = None,
        limit: int | None = None,
        page_size: int = 1000,
    ) -> AsyncIterator[Row]:
        """Rows of one partition (`partition` = every partition key column), as an async
        iterator (``async for row in db.query(...)``), a page at a time.

        `where` restricts clustering columns: ``{"column": {"eq"|"gt"|"gte"|"lt"|"lte":
        value}}``. As in CQL, the restricted columns must be a prefix of the clustering key,
        all but the last with ``eq`` only, the last with ``eq`` or a range. `order` is the
        direction of the first clustering column (``None``: the table's clustering order).
        `limit` caps the rows. Everything is checked when this is called, before any query.
        """
        name = self._table(table)
        key_values = table.normalize_key(partition, partition=True)
        clauses = [f"{quote(c)} = ?" for c in key_values]
        params: list[Any] = list(key_values.values())
        restricted = _clustering_where(table, where)
        for column, op, value in restricted:
            clauses.append(f"{quote(column)} {_WHERE_OPS[op]} ?")
            params.append(value)
        columns = ", ".join(quote(c) for c in table.columns)
        cql = f"SELECT {columns} FROM {name} WHERE {' AND '.join(clauses)}"
        if order is not None:
            if order not in ("asc", "desc"):
                raise ValueError(f"order must be 'asc', 'desc' or None, got {order!r}")
            if not table.clustering_key:
                raise ValueError(f"table {table.name!r} has no clustering column to order by")
            cql += f" ORDER BY {quote(table.clustering_key[0])} {order.upper()}"
        if limit is not None:
            require_positive_ints(limit=limit)
            cql += " LIMIT ?"
            params.append(limit)
        return _TableRows(table, self.session.iterate(cql, params, page_size=page_size))


def _using(ttl: int | None) -> tuple[str, list[Any]]:
    if ttl is None:
        return "", []
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL:
        raise ValueError(f"ttl must be an int of seconds, 1 to {MAX_TTL}, got {ttl!r}")
    return " USING TTL ?", [ttl]


def _clustering_where(
    table: Table, where: Mapping[str, Mapping[str, Any]] | None
) -> list[tuple[str, str, Any]]:
    if where is None:
        return []
    if not isinstance(where, Mapping):
        raise TypeError("where must be a mapping of column -> {op: value}")
    for column in where:
        table.column(column)
        if column not in table.clustering_key:
            raise ValueError(
                f"{table.name}.{column} is not a clustering column: where only restricts "
                f"clustering columns ({', '.join(table.clustering_key) or 'none'})"
            )
    result: list[tuple[str, str, Any]] = []
    restricted = [c for c in table.clustering_key if c in where]
    if restricted != list(table.clustering_key[: len(restricted)]):
        raise ValueError(
            f"where on {table.name}: restrict a prefix of the clustering key "
            f"({', '.join(table.clustering_key)}), got {', '.join(restricted)}"
        )
    for n, column in enumerate(restricted):
        ops = where[column]
        if not isinstance(ops, Mapping) or not ops:
            raise TypeError(f"where[{column!r}] must be a non-empty mapping of op -> value")
        for op, value in ops.items():
            if op not in _WHERE_OPS:
                raise ValueError(
                    f"where[{column!r}]: unknown operator {op!r} (use {', '.join(_WHERE_OPS)})"
                )
            if value is None:
                raise ValueError(f"where[{column!r}][{op!r}] cannot be None")
            result.append((column, op, table.normalize(column, value)))
        names = set(ops)
        if "eq" in names and len(names) > 1:
            raise ValueError(f"where[{column!r}]: eq cannot be combined with a range")
        if ("gt" in names and "gte" in names) or ("lt" in names and "lte" in names):
            raise ValueError(f"where[{column!r}]: at most one lower and one upper bound")
        if n < len(restricted) - 1 and "eq" not in names:
            raise ValueError(
                f"where[{column!r}]: only the last restricted clustering column may use a range"
            )
    return result


class _TableRows:
    """``Database.query``'s iterator: the session's :class:`RowIterator`, rows normalized."""

    def __init__(self, table: Table, rows: RowIterator) -> None:
        self._table = table
        self._rows = rows

    def __aiter__(self) -> _TableRows:
        return self

    async def __anext__(self) -> Row:
        return self._table.from_driver(await self._rows.__anext__())

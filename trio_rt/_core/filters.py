"""Row filters for table subscriptions: parsed from a client's JSON, matched on Python rows.

Sans-IO: no Cassandra import. A filter is checked against a table definition (anything with
the shape of :class:`FilterTable`, in practice ``trio_rt.cassandra.Table``) whose
``from_json`` turns each JSON value into the column's Python value, so :meth:`RowFilter.matches`
compares like with like (the values a ``Change`` carries).

Shape (docs/cassandra.md, "Filters")::

    {"author": "ann",                      # equality
     "score": {"gte": 10, "lt": 100},      # several operators on one column: ANDed
     "tag": {"in": ["a", "b"]}}            # a non-empty array, at most 100 values

All columns are ANDed. Operators: ``eq``, ``in``, ``gt``, ``gte``, ``lt``, ``lte``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from .protocol import ErrorCode, ProtocolError

__all__ = [
    "MAX_FILTER_COLUMNS",
    "MAX_IN_VALUES",
    "Clause",
    "FilterTable",
    "RowFilter",
    "parse_filters",
]

#: At most this many columns in one filter (TOO_LARGE beyond).
MAX_FILTER_COLUMNS = 20
#: At most this many values in one ``in`` list (TOO_LARGE beyond).
MAX_IN_VALUES = 100

Op = Literal["eq", "in", "gt", "gte", "lt", "lte"]
_OPS: tuple[Op, ...] = ("eq", "in", "gt", "gte", "lt", "lte")
_RANGE: dict[str, Callable[[Any, Any], Any]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


class _ColumnLike(Protocol):
    @property
    def cql_type(self) -> str: ...


class FilterTable(Protocol):
    """What filters need from a table definition (``trio_rt.cassandra.Table`` has it)."""

    @property
    def name(self) -> str: ...

    @property
    def columns(self) -> Mapping[str, _ColumnLike]: ...

    def from_json(self, column: str, value: Any) -> Any: ...

    def to_json(self, row: Mapping[str, Any]) -> dict[str, Any]: ...

    def rangeable(self, column: str) -> bool: ...


@dataclass(frozen=True)
class Clause:
    """One condition: `column` `op` `value` (for ``in``, `value` is a tuple of values)."""

    column: str
    op: Op
    value: Any

    def matches(self, data: Mapping[str, Any]) -> bool:
        if self.column not in data:
            return False
        actual = data[self.column]
        try:
            if self.op == "eq":
                return bool(actual == self.value)
            if self.op == "in":
                return any(actual == v for v in self.value)
            if actual is None:
                return False
            return bool(_RANGE[self.op](actual, self.value))
        except TypeError:  # values of another type than the column's: no match
            return False


@dataclass(frozen=True)
class RowFilter:
    """A parsed filter: every clause must hold (an empty filter matches every row)."""

    table: FilterTable
    clauses: tuple[Clause, ...]

    @property
    def columns(self) -> frozenset[str]:
        """The columns the filter looks at (a change whose data lacks one never matches)."""
        return frozenset(clause.column for clause in self.clauses)

    def matches(self, data: Mapping[str, Any]) -> bool:
        """Whether `data` (column -> Python value, e.g. ``Change.data``) passes the filter.

        A column absent from `data` never satisfies a clause on it (a delete's data only
        holds the key, an update's only the key and the changed columns). ``eq``/``in`` with
        null match a present ``None``; ranges never match ``None``. Comparing with a value of
        another type is a non-match, never an error.
        """
        return all(clause.matches(data) for clause in self.clauses)

    def to_json(self) -> dict[str, dict[str, Any]]:
        """The filter in its canonical JSON form: ``{column: {op: value}}`` (equalities as
        ``{"eq": value}``, ``in`` as an array), values as :meth:`Table.to_json` writes them."""
        result: dict[str, dict[str, Any]] = {}
        for clause in self.clauses:
            ops = result.setdefault(clause.column, {})
            if clause.op == "in":
                ops["in"] = [self._json(clause.column, v) for v in clause.value]
            else:
                ops[clause.op] = self._json(clause.column, clause.value)
        return result

    def _json(self, column: str, value: Any) -> Any:
        return self.table.to_json({column: value})[column]


def _show(name: str) -> str:
    return repr(name if len(name) <= 50 else name[:50] + "...")


def parse_filters(
    raw: object, table: FilterTable, *, request_id: str | int | None = None
) -> RowFilter:
    """Parse a subscription's ``filters`` for `table`.

    ``None`` (no filters) gives an empty filter. Raises :class:`ProtocolError` and nothing
    else: ``INVALID_FIELD`` naming the column and what is wrong (not an object, unknown column,
    collection column, unknown operator, a value that does not fit the column's type, a range
    on a column without an order such as boolean/uuid/timeuuid/blob, null in a range, an empty
    ``in``), ``TOO_LARGE`` for more than 20 columns or an ``in`` of more than 100 values.
    Column names are only ever looked up in the table definition, values only converted:
    nothing from the filter reaches a query.
    """

    def invalid(message: str, code: ErrorCode = ErrorCode.INVALID_FIELD) -> ProtocolError:
        return ProtocolError(code, message, request_id=request_id)

    if raw is None:
        return RowFilter(table, ())
    if not isinstance(raw, dict):
        raise invalid("filters must be an object of column -> value or {operator: value}")
    if len(raw) > MAX_FILTER_COLUMNS:
        raise invalid(
            f"filters name {len(raw)} columns; at most {MAX_FILTER_COLUMNS}", ErrorCode.TOO_LARGE
        )
    clauses: list[Clause] = []
    for column, spec in raw.items():
        if not isinstance(column, str) or column not in table.columns:
            raise invalid(f"filters: table {table.name!r} has no column {_show(str(column))}")
        if "<" in table.columns[column].cql_type:
            raise invalid(f"filters: column {column!r} is a collection; filter on scalar columns")
        ops: dict[str, Any] = spec if isinstance(spec, dict) else {"eq": spec}
        if not ops:
            raise invalid(f"filters: column {column!r} has an empty operator object")
        for op, value in ops.items():
            if op not in _OPS:
                raise invalid(
                    f"filters: column {column!r}: unknown operator {_show(str(op))} "
                    f"(use {', '.join(_OPS)})"
                )
            clauses.append(_clause(table, column, op, value, invalid))
    return RowFilter(table, tuple(clauses))


def _clause(
    table: FilterTable,
    column: str,
    op: Op,
    value: object,
    invalid: Callable[..., ProtocolError],
) -> Clause:
    def convert(item: object) -> Any:
        try:
            return table.from_json(column, item)
        except ValueError as exc:
            raise invalid(f"filters: column {column!r} ({op}): {exc}") from None

    if op == "in":
        if not isinstance(value, list) or not value:
            raise invalid(f"filters: column {column!r}: 'in' takes a non-empty array")
        if len(value) > MAX_IN_VALUES:
            raise invalid(
                f"filters: column {column!r}: 'in' has {len(value)} values; "
                f"at most {MAX_IN_VALUES}",
                ErrorCode.TOO_LARGE,
            )
        return Clause(column, op, tuple(convert(v) for v in value))
    if op != "eq":
        if not table.rangeable(column):
            raise invalid(
                f"filters: column {column!r} ({table.columns[column].cql_type}) has no order: "
                f"use eq or in, not {op}"
            )
        if value is None:
            raise invalid(f"filters: column {column!r}: {op} cannot compare with null")
    return Clause(column, op, convert(value))

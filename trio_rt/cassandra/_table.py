"""Table definitions: :class:`Column` and :class:`Table`, checked when they are built.

Identifiers and types are validated at construction (``ValueError``/``TypeError`` naming what
is wrong), so the CQL that :class:`Database` builds from a table is always well-formed. A
:class:`Table` also checks values for its columns and converts rows between their canonical
Python form (see :mod:`._types`) and JSON-safe values for the wire (:meth:`Table.to_json`,
:meth:`Table.from_json`). Nothing here sends a request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ._types import MAX_TTL, CqlType, Kind, check_name, parse_type

if TYPE_CHECKING:
    from ._session import Row

__all__ = ["Column", "Table"]


@dataclass(frozen=True)
class Column:
    """One column: a name (``[a-z][a-z0-9_]{0,47}``) and a CQL type (``text``, ``int``,
    ``timestamp``, ``list<text>``, ``map<text, int>``, ...). Checked at construction
    (``ValueError``/``TypeError``).

    Its value methods keep ``None`` as it is and raise ``TypeError`` (wrong Python type) or
    ``ValueError`` (bad value) saying what was expected; :class:`Table`'s methods of the same
    names add the table and column to the message.
    """

    name: str
    cql_type: str
    _type: CqlType = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_name(self.name, "column")
        parsed = parse_type(self.cql_type, self.name)
        object.__setattr__(self, "cql_type", parsed.cql)
        object.__setattr__(self, "_type", parsed)

    @property
    def kind(self) -> Kind:
        """``"scalar"``, or the collection: ``"list"``, ``"set"``, ``"map"``."""
        return self._type.kind

    @property
    def rangeable(self) -> bool:
        """Whether the column supports ordering comparisons (gt/gte/lt/lte) in filters."""
        return self._type.rangeable

    def normalize(self, value: Any) -> Any:
        """`value` checked for this column and put in canonical form (:mod:`._types`)."""
        return None if value is None else self._type.normalize(value)

    def to_json(self, value: Any) -> Any:
        """`value` as a JSON-safe value (see :meth:`Table.to_json`)."""
        return self._type.to_json(value)

    def from_json(self, value: Any) -> Any:
        """The Python value of a JSON value (see :meth:`Table.from_json`)."""
        return self._type.from_json(value)


class Table:
    """A table definition: columns, primary key, clustering order, default TTL.

    Everything is validated here (``ValueError``/``TypeError`` naming what is wrong): names
    match ``[a-z][a-z0-9_]{0,47}``, types are supported, key columns exist, are scalars and
    are listed once, `clustering_order` only names clustering columns (``"ASC"``/``"DESC"``).
    A single key column may be given as a string. ``capture_full_rows=True``: with a
    capture, every change carries the row's columns, not only what was written: an update (or
    an insert of some columns) reads the row first and carries it merged with the new values,
    a delete reads it first and carries the last known row (see :class:`Change`). One read
    per captured write that does not set every column; none without a capture.
    """

    def __init__(
        self,
        name: str,
        columns: Mapping[str, str] | Sequence[Column],
        partition_key: Sequence[str] | str,
        clustering_key: Sequence[str] | str = (),
        clustering_order: Mapping[str, str] | None = None,
        default_ttl: int | None = None,
        *,
        capture_full_rows: bool = False,
    ) -> None:
        self.name = check_name(name, "table")
        built: list[Column]
        if isinstance(columns, Mapping):
            built = [Column(n, t) for n, t in columns.items()]
        elif isinstance(columns, str):
            raise TypeError("columns must be a mapping of name -> type or a list of Column")
        else:
            built = list(columns)
            for c in built:
                if not isinstance(c, Column):
                    raise TypeError(f"columns must be Column objects, got {c!r}")
        if not built:
            raise ValueError(f"table {name!r} needs at least one column")
        self.columns: dict[str, Column] = {}
        for c in built:
            if c.name in self.columns:
                raise ValueError(f"table {name!r}: column {c.name!r} is defined twice")
            self.columns[c.name] = c
        self.partition_key = self._key(partition_key, "partition key")
        self.clustering_key = self._key(clustering_key, "clustering key")
        if not self.partition_key:
            raise ValueError(f"table {name!r} needs a partition key")
        self.primary_key: tuple[str, ...] = self.partition_key + self.clustering_key
        if len(set(self.primary_key)) != len(self.primary_key):
            raise ValueError(f"table {name!r}: a column appears twice in the primary key")
        order: dict[str, Literal["ASC", "DESC"]] = {}
        for column, direction in (clustering_order or {}).items():
            if column not in self.clustering_key:
                raise ValueError(
                    f"table {name!r}: clustering_order names {column!r}, "
                    "which is not a clustering column"
                )
            if not isinstance(direction, str) or direction.upper() not in ("ASC", "DESC"):
                raise ValueError(
                    f"table {name!r}: clustering_order[{column!r}] must be 'ASC' or 'DESC', "
                    f"got {direction!r}"
                )
            order[column] = "ASC" if direction.upper() == "ASC" else "DESC"
        self.clustering_order: dict[str, Literal["ASC", "DESC"]] = {
            c: order.get(c, "ASC") for c in self.clustering_key
        }
        if default_ttl is not None and (
            isinstance(default_ttl, bool)
            or not isinstance(default_ttl, int)
            or not 0 <= default_ttl <= MAX_TTL
        ):
            raise ValueError(
                f"table {name!r}: default_ttl must be an int of seconds, 0 to {MAX_TTL}"
            )
        self.default_ttl = default_ttl
        self.capture_full_rows = bool(capture_full_rows)

    def _key(self, names: Sequence[str] | str, what: str) -> tuple[str, ...]:
        key = (names,) if isinstance(names, str) else tuple(names)
        for n in key:
            if n not in self.columns:
                raise ValueError(f"table {self.name!r}: {what} column {n!r} is not a column")
            if self.columns[n].kind != "scalar":
                raise ValueError(
                    f"table {self.name!r}: {what} column {n!r} has a collection type "
                    f"({self.columns[n].cql_type}), which cannot be part of a key"
                )
        return key

    def __repr__(self) -> str:
        return f"Table({self.name!r}, primary key {self.primary_key})"

    def column(self, name: object) -> Column:
        """The column `name`; ``ValueError`` if the table has none."""
        column = self.columns.get(name) if isinstance(name, str) else None
        if column is None:
            raise ValueError(f"table {self.name!r} has no column {name!r}")
        return column

    # -- values -----------------------------------------------------------------------------

    def normalize(self, column: str, value: Any) -> Any:
        """`value` checked for `column` and put in canonical form (see the module doc).

        ``None`` is kept. Raises ``ValueError`` (unknown column, out of range) or
        ``TypeError`` (wrong Python type), naming the column.
        """
        col = self.column(column)
        if value is None:
            return None
        try:
            return col.normalize(value)
        except TypeError as exc:
            raise TypeError(f"{self.name}.{column} ({col.cql_type}): {exc}") from None
        except ValueError as exc:
            raise ValueError(f"{self.name}.{column} ({col.cql_type}): {exc}") from None

    def to_json(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A row (column -> Python value) as JSON-safe values.

        uuid/timeuuid -> string; timestamp -> ISO 8601 UTC with milliseconds and ``Z``
        (a naive datetime is taken as UTC); date -> ``YYYY-MM-DD``; decimal -> string;
        blob -> standard base64; float/double NaN and infinities -> ``"NaN"``,
        ``"Infinity"``, ``"-Infinity"``; set -> sorted array; map -> object whose keys are
        the keys' JSON form as strings; ``None`` -> null. Other values pass through.
        Raises ``ValueError`` for a column the table does not have, and like
        :meth:`normalize` for a value of the wrong type.
        """
        result: dict[str, Any] = {}
        for name, value in row.items():
            col = self.column(name)
            try:
                result[name] = col.to_json(value)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{self.name}.{name} ({col.cql_type}): {exc}") from None
        return result

    def from_json(self, column: str, value: Any) -> Any:
        """The Python value for a JSON value of `column` (the inverse of :meth:`to_json`).

        JSON null -> ``None``. Strict: an int column takes only integral JSON numbers, a
        timestamp only an ISO 8601 string (an offset or ``Z``; none means UTC), a uuid only
        its string form, a blob only standard base64, and so on. Raises ``ValueError`` naming
        the column and what was expected, and nothing else (for any JSON input).
        """
        col = self.column(column)
        try:
            return col.from_json(value)
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError(f"{self.name}.{column} ({col.cql_type}): {exc}") from None

    def rangeable(self, column: str) -> bool:
        """Whether `column` supports ordering comparisons (gt/gte/lt/lte) in filters."""
        return self.column(column).rangeable

    def from_driver(self, row: Mapping[str, Any]) -> Row:
        """A row as the driver returns it, its values in canonical form (a set for a
        ``SortedSet``, a ``datetime.date`` for a driver ``Date``, ...). ``None`` and columns
        the table does not have pass through unchanged."""
        result: Row = {}
        for name, value in row.items():
            col = self.columns.get(name)
            result[name] = value if col is None else col.normalize(value)
        return result

    def normalize_values(self, values: object, *, allow_key: bool = True) -> dict[str, Any]:
        """`values` (column -> value) checked and in canonical form, like :meth:`normalize`
        for each; ``None`` is kept. ``allow_key=False`` refuses primary key columns (what an
        update sets). Raises ``TypeError`` when `values` is not a mapping."""
        if not isinstance(values, Mapping):
            raise TypeError("values must be a mapping of column -> value")
        result = {}
        for name, value in values.items():
            self.column(name)
            if not allow_key and name in self.primary_key:
                raise ValueError(
                    f"{self.name}.{name} is a primary key column: it cannot be updated"
                )
            result[name] = self.normalize(name, value)
        return result

    def normalize_key(self, key: object, *, partition: bool = False) -> dict[str, Any]:
        """`key` checked: exactly the primary key's columns (the partition key's with
        ``partition=True``), none of them ``None``; returned in key order, canonical.
        Raises ``ValueError`` naming a missing, extra or ``None`` column, ``TypeError``
        when `key` is not a mapping."""
        columns = self.partition_key if partition else self.primary_key
        what = "partition key" if partition else "primary key"
        if not isinstance(key, Mapping):
            raise TypeError(f"{what} must be a mapping of column -> value")
        for name in key:
            self.column(name)
            if name not in columns:
                raise ValueError(f"{self.name}.{name} is not in the {what} ({', '.join(columns)})")
        result = {}
        for name in columns:
            if name not in key:
                raise ValueError(f"{self.name}.{name} is missing from the {what}")
            if key[name] is None:
                raise ValueError(f"{self.name}.{name} is part of the {what}: it cannot be None")
            result[name] = self.normalize(name, key[name])
        return result

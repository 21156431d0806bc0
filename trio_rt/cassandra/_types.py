"""A small table/model layer over :class:`CassandraSession`, with a change-capture seam.

* :class:`Column` and :class:`Table` describe a table; everything is validated when they are
  built (identifiers, key columns, types), so the CQL built from them is always well-formed.
* :class:`Database` runs writes and reads for tables of one keyspace. Identifiers come only
  from the :class:`Table`; values are always bound (``?`` markers, prepared statements), never
  spliced into the CQL text. Bad input raises ``ValueError`` / ``TypeError`` naming the
  column, before any request is sent.
* Change capture: with a :class:`ChangeCapture`, every insert/update/delete becomes ONE logged
  batch holding the data statement and the capture's own statements (for instance a change-log
  row), written with the capture's timestamp (see docs/cassandra.md).
* JSON bridging: :meth:`Table.to_json` / :meth:`Table.from_json` convert between the Python
  values of a row and JSON-safe values for the wire.

Canonical Python values (what reads return and what :class:`Change` carries): ``timestamp`` is
an *aware* UTC ``datetime`` truncated to milliseconds (a naive one is taken as UTC), ``date``
a ``datetime.date``, ``float`` a Python float rounded to 32 bits, ``decimal`` a ``Decimal``,
``blob`` ``bytes``, ``list`` a list, ``set`` a ``set``, ``map`` a ``dict``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math
import re
import struct
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Protocol

from cassandra.util import Date as _DriverDate
from cassandra.util import SortedSet as _DriverSortedSet

from ._session import CassandraSession, Params, Row, RowIterator

__all__ = [
    "CapturedWrite",
    "Change",
    "ChangeCapture",
    "Column",
    "Database",
    "Table",
]

_NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")
_MAX_TTL = 630_720_000  # Cassandra's limit (20 years)
_MAX_JSON_TEXT = 256  # longest string accepted for a uuid/timestamp/date/decimal from JSON
Operation = Literal["insert", "update", "delete"]


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise ValueError(
            f"invalid {what} name {name!r}: use a lower-case letter, then lower-case letters, "
            "digits or '_' (48 characters at most)"
        )
    return name


def _q(name: str) -> str:
    """A quoted CQL identifier. Names are checked against ``_NAME`` first, so quoting only
    keeps reserved words (``order``, ``from``, ...) usable as column names."""
    return f'"{name}"'


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# -- scalar types ---------------------------------------------------------------------------


class _Scalar:
    """One scalar CQL type: Python validation, JSON conversion both ways, driver values."""

    __slots__ = ("from_json", "from_key", "name", "normalize", "rangeable", "to_json")

    def __init__(
        self,
        name: str,
        normalize: Callable[[Any], Any],
        to_json: Callable[[Any], Any],
        from_json: Callable[[Any], Any],
        *,
        rangeable: bool,
        from_key: Callable[[str], Any] | None = None,
    ) -> None:
        self.name = name
        #: python value (as given by the app, or as returned by the driver) -> canonical
        self.normalize = normalize
        self.to_json = to_json
        self.from_json = from_json
        #: a map key from its JSON object key (a string)
        self.from_key = from_key or from_json
        #: whether gt/gte/lt/lte make sense (filters)
        self.rangeable = rangeable


def _expect(value: object, types: type | tuple[type, ...], what: str) -> None:
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise TypeError(f"expected {what}, got bool")
    if not isinstance(value, types):
        raise TypeError(f"expected {what}, got {type(value).__name__}")


def _text(value: object) -> str:
    _expect(value, str, "str")
    assert isinstance(value, str)
    return value


def _ascii(value: object) -> str:
    text = _text(value)
    if not text.isascii():
        raise ValueError("expected ASCII text, got non-ASCII characters")
    return text


def _integer(bits: int | None) -> Callable[[Any], int]:
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if bits else (None, None)

    def check(value: object) -> int:
        _expect(value, int, "int")
        assert isinstance(value, int)
        if low is not None and high is not None and not low <= value <= high:
            raise ValueError(f"{value} is out of range for a {bits}-bit integer")
        return int(value)

    return check


def _double(value: object) -> float:
    _expect(value, (int, float), "float or int")
    assert isinstance(value, int | float)
    try:
        return float(value)
    except OverflowError:
        raise ValueError("the integer is too large for a double") from None


def _float32(value: object) -> float:
    number = _double(value)
    try:
        return float(struct.unpack("<f", struct.pack("<f", number))[0])
    except OverflowError:
        raise ValueError(f"{number!r} is out of range for a 32-bit float") from None


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected bool, got {type(value).__name__}")
    return value


def _uuid(value: object) -> uuid.UUID:
    _expect(value, uuid.UUID, "uuid.UUID")
    assert isinstance(value, uuid.UUID)
    return value


def _timeuuid(value: object) -> uuid.UUID:
    checked = _uuid(value)
    if checked.version != 1:
        raise ValueError(f"expected a version 1 (time-based) UUID, got version {checked.version}")
    return checked


def _timestamp(value: object) -> dt.datetime:
    _expect(value, dt.datetime, "datetime.datetime")
    assert isinstance(value, dt.datetime)
    try:
        moment = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+05:00
        raise ValueError(f"{value} is outside Python's datetime range in UTC") from None
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _date(value: object) -> dt.date:
    if isinstance(value, _DriverDate):  # what the driver returns for a date column
        try:
            result: dt.date = value.date()
        except (ValueError, OverflowError):
            raise ValueError(f"{value} is outside Python's date range") from None
        return result
    if isinstance(value, dt.datetime) or not isinstance(value, dt.date):
        raise TypeError(f"expected datetime.date, got {type(value).__name__}")
    return value


def _decimal(value: object) -> Decimal:
    _expect(value, (Decimal, int), "decimal.Decimal or int")
    assert isinstance(value, Decimal | int)
    number = Decimal(value)
    if not number.is_finite():
        raise ValueError("a Cassandra decimal must be finite")
    return number


def _blob(value: object) -> bytes:
    _expect(value, (bytes, bytearray, memoryview), "bytes")
    assert isinstance(value, bytes | bytearray | memoryview)
    return bytes(value)


# JSON -> canonical


def _json_text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_json_kind(value)}")
    return value


def _json_ascii(value: object) -> str:
    text = _json_text(value)
    if not text.isascii():
        raise ValueError("expected ASCII text, got non-ASCII characters")
    return text


def _bounded_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected {what} as a string, got {_json_kind(value)}")
    if len(value) > _MAX_JSON_TEXT:
        raise ValueError(f"expected {what}, got a string of {len(value)} characters")
    return value


def _json_integer(bits: int | None) -> Callable[[Any], int]:
    check = _integer(bits)

    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_json_kind(value)}")
        return check(value)

    return convert


def _key_integer(bits: int | None) -> Callable[[str], int]:
    check = _integer(bits)

    def convert(value: str) -> int:
        if not re.fullmatch(r"-?[0-9]{1,40}", value):
            raise ValueError(f"expected an integer key, got {value[:50]!r}")
        return check(int(value))

    return convert


_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _json_floating(check: Callable[[Any], float]) -> Callable[[Any], float]:
    def convert(value: object) -> float:
        if isinstance(value, str) and value in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[value]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {_json_kind(value)}")
        return check(value)

    return convert


def _key_floating(check: Callable[[Any], float]) -> Callable[[str], float]:
    def convert(value: str) -> float:
        if value in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[value]
        if not re.fullmatch(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?", value[:_MAX_JSON_TEXT]):
            raise ValueError(f"expected a number key, got {value[:50]!r}")
        return check(float(value))

    return convert


def _floating_to_json(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _json_boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_json_kind(value)}")
    return value


def _key_boolean(value: str) -> bool:
    if value not in ("true", "false"):
        raise ValueError(f"expected 'true' or 'false', got {value[:50]!r}")
    return value == "true"


def _json_uuid(value: object) -> uuid.UUID:
    text = _bounded_text(value, "a UUID")
    try:
        return uuid.UUID(text)
    except ValueError:
        raise ValueError(f"expected a UUID, got {text[:50]!r}") from None


def _json_timeuuid(value: object) -> uuid.UUID:
    return _timeuuid(_json_uuid(value))


def _json_timestamp(value: object) -> dt.datetime:
    text = _bounded_text(value, "an ISO 8601 timestamp")
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected an ISO 8601 timestamp, got {text[:50]!r}") from None
    return _timestamp(moment)


def _timestamp_to_json(value: dt.datetime) -> str:
    moment = _timestamp(value)
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def _json_date(value: object) -> dt.date:
    text = _bounded_text(value, "an ISO 8601 date")
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected an ISO 8601 date (YYYY-MM-DD), got {text[:50]!r}") from None


def _json_decimal(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a decimal as a string or number, got {_json_kind(value)}")
    text = _bounded_text(value, "a decimal") if isinstance(value, str) else repr(value)
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"expected a decimal, got {text[:50]!r}") from None
    if not number.is_finite():
        raise ValueError("a Cassandra decimal must be finite")
    return number


def _json_blob(value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"expected base64 text, got {_json_kind(value)}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("expected standard base64 text") from None


def _same(value: Any) -> Any:
    return value


def _scalars() -> dict[str, _Scalar]:
    text = _Scalar("text", _text, _same, _json_text, rangeable=True)
    types = [
        text,
        _Scalar("varchar", _text, _same, _json_text, rangeable=True),
        _Scalar("ascii", _ascii, _same, _json_ascii, rangeable=True),
        _Scalar("boolean", _boolean, _same, _json_boolean, rangeable=False, from_key=_key_boolean),
        _Scalar("uuid", _uuid, str, _json_uuid, rangeable=False),
        _Scalar("timeuuid", _timeuuid, str, _json_timeuuid, rangeable=False),
        _Scalar("timestamp", _timestamp, _timestamp_to_json, _json_timestamp, rangeable=True),
        _Scalar("date", _date, dt.date.isoformat, _json_date, rangeable=True),
        _Scalar("decimal", _decimal, str, _json_decimal, rangeable=True),
        _Scalar(
            "blob",
            _blob,
            lambda v: base64.b64encode(v).decode("ascii"),
            _json_blob,
            rangeable=False,
        ),
        _Scalar(
            "double",
            _double,
            _floating_to_json,
            _json_floating(_double),
            rangeable=True,
            from_key=_key_floating(_double),
        ),
        _Scalar(
            "float",
            _float32,
            _floating_to_json,
            _json_floating(_float32),
            rangeable=True,
            from_key=_key_floating(_float32),
        ),
    ]
    for name, bits in [
        ("tinyint", 8),
        ("smallint", 16),
        ("int", 32),
        ("bigint", 64),
        ("varint", None),
    ]:
        types.append(
            _Scalar(
                name,
                _integer(bits),
                _same,
                _json_integer(bits),
                rangeable=True,
                from_key=_key_integer(bits),
            )
        )
    return {t.name: t for t in types}


_SCALARS = _scalars()
_COLLECTION = re.compile(r"(list|set)<([a-z]+)>|map<([a-z]+),([a-z]+)>")


@dataclass(frozen=True)
class _CqlType:
    """A parsed column type: a scalar, or a list/set/map of scalars."""

    kind: Literal["scalar", "list", "set", "map"]
    items: tuple[_Scalar, ...]

    @property
    def scalar(self) -> _Scalar | None:
        return self.items[0] if self.kind == "scalar" else None

    @property
    def cql(self) -> str:
        names = ", ".join(t.name for t in self.items)
        return names if self.kind == "scalar" else f"{self.kind}<{names}>"

    def normalize(self, value: Any) -> Any:
        if self.kind == "scalar":
            return self.items[0].normalize(value)
        if self.kind == "map":
            if not isinstance(value, Mapping):
                raise TypeError(f"expected a dict, got {type(value).__name__}")
            key, item = self.items
            return {
                self._element(key.normalize, k): self._element(item.normalize, v)
                for k, v in value.items()
            }
        element = self.items[0].normalize
        if self.kind == "set":
            # the driver returns sets as cassandra.util.SortedSet
            if not isinstance(value, set | frozenset | _DriverSortedSet):
                raise TypeError(f"expected a set, got {type(value).__name__}")
            return {self._element(element, v) for v in value}
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        return [self._element(element, v) for v in value]

    @staticmethod
    def _element(check: Callable[[Any], Any], value: Any) -> Any:
        if value is None:
            raise ValueError("a collection cannot hold null")
        return check(value)

    def to_json(self, value: Any) -> Any:
        if value is None:
            return None
        if self.kind == "scalar":
            return self.items[0].to_json(self.items[0].normalize(value))
        value = self.normalize(value)
        if self.kind == "map":
            key, item = self.items
            return {_key_to_json(key, k): item.to_json(v) for k, v in value.items()}
        element = self.items[0]
        ordered = sorted(value) if self.kind == "set" else value
        return [element.to_json(v) for v in ordered]

    def from_json(self, value: Any) -> Any:
        if value is None:
            return None
        if self.kind == "scalar":
            return self.items[0].from_json(value)
        if self.kind == "map":
            if not isinstance(value, dict):
                raise ValueError(f"expected an object, got {_json_kind(value)}")
            key, item = self.items
            result = {}
            for k, v in value.items():
                if v is None:
                    raise ValueError("a map cannot hold null")
                result[key.from_key(k)] = item.from_json(v)
            return result
        if not isinstance(value, list):
            raise ValueError(f"expected an array, got {_json_kind(value)}")
        element = self.items[0]
        if any(v is None for v in value):
            raise ValueError(f"a {self.kind} cannot hold null")
        items = [element.from_json(v) for v in value]
        return set(items) if self.kind == "set" else items


def _key_to_json(scalar: _Scalar, value: Any) -> str:
    converted = scalar.to_json(value)
    if isinstance(converted, str):
        return converted
    if isinstance(converted, bool):
        return "true" if converted else "false"
    return repr(converted) if isinstance(converted, float) else str(converted)


def _parse_type(cql_type: object, column: str) -> _CqlType:
    if not isinstance(cql_type, str):
        raise TypeError(f"column {column!r}: the type must be a string, got {cql_type!r}")
    compact = re.sub(r"\s+", "", cql_type.lower())
    scalar = _SCALARS.get(compact)
    if scalar is not None:
        return _CqlType("scalar", (scalar,))
    match = _COLLECTION.fullmatch(compact)
    if match is not None:
        names = [match.group(2)] if match.group(1) else [match.group(3), match.group(4)]
        if all(n in _SCALARS for n in names):
            kind: Literal["list", "set", "map"] = match.group(1) or "map"  # type: ignore[assignment]
            return _CqlType(kind, tuple(_SCALARS[n] for n in names))
    known = ", ".join(sorted(_SCALARS))
    raise ValueError(
        f"column {column!r}: unsupported type {cql_type!r} (use one of {known}, or "
        "list<...>, set<...>, map<..., ...> of those)"
    )


# -- table definition -----------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One column: a name (``[a-z][a-z0-9_]{0,47}``) and a CQL type (``text``, ``int``,
    ``timestamp``, ``list<text>``, ``map<text, int>``, ...). Checked at construction
    (``ValueError``/``TypeError``)."""

    name: str
    cql_type: str
    _type: _CqlType = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_name(self.name, "column")
        parsed = _parse_type(self.cql_type, self.name)
        object.__setattr__(self, "cql_type", parsed.cql)
        object.__setattr__(self, "_type", parsed)


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
        self.name = _check_name(name, "table")
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
            or not 0 <= default_ttl <= _MAX_TTL
        ):
            raise ValueError(
                f"table {name!r}: default_ttl must be an int of seconds, 0 to {_MAX_TTL}"
            )
        self.default_ttl = default_ttl
        self.capture_full_rows = bool(capture_full_rows)

    def _key(self, names: Sequence[str] | str, what: str) -> tuple[str, ...]:
        key = (names,) if isinstance(names, str) else tuple(names)
        for n in key:
            if n not in self.columns:
                raise ValueError(f"table {self.name!r}: {what} column {n!r} is not a column")
            if self.columns[n]._type.kind != "scalar":
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
            return col._type.normalize(value)
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
                result[name] = col._type.to_json(value)
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
            return col._type.from_json(value)
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError(f"{self.name}.{column} ({col.cql_type}): {exc}") from None

    def rangeable(self, column: str) -> bool:
        """Whether `column` supports ordering comparisons (gt/gte/lt/lte) in filters."""
        scalar = self.column(column)._type.scalar
        return scalar is not None and scalar.rangeable

    def _from_driver(self, row: Mapping[str, Any]) -> Row:
        result: Row = {}
        for name, value in row.items():
            col = self.columns.get(name)
            result[name] = value if col is None or value is None else col._type.normalize(value)
        return result

    def _values(self, values: object, what: str, *, allow_key: bool) -> dict[str, Any]:
        if not isinstance(values, Mapping):
            raise TypeError(f"{what} must be a mapping of column -> value")
        result = {}
        for name, value in values.items():
            self.column(name)
            if not allow_key and name in self.primary_key:
                raise ValueError(
                    f"{self.name}.{name} is a primary key column: it cannot be updated"
                )
            result[name] = self.normalize(name, value)
        return result

    def _key_values(self, key: object, columns: Sequence[str], what: str) -> dict[str, Any]:
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


# -- change capture -------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One write, as seen by a :class:`ChangeCapture` (values in canonical Python form)."""

    table: str
    operation: Operation
    #: primary key columns -> values
    key: dict[str, Any]
    #: insert: the row as written; update: key + changed columns; delete: the key. With
    #: ``Table.capture_full_rows``: the whole row after the write (read before it, merged with
    #: what was written) for an insert or update, the last known row for a delete (the key
    #: alone when there was no row)
    data: dict[str, Any]
    #: the table's definition (set by :class:`Database`): ``definition.to_json(data)``
    definition: Table | None = field(default=None, compare=False, repr=False)


@dataclass
class CapturedWrite:
    """What a capture adds to a write: see :class:`ChangeCapture`."""

    #: microseconds since the epoch; the whole batch is written USING this timestamp
    timestamp: int
    #: extra statements for the SAME logged batch (query, params)
    statements: list[tuple[str, Params]]
    #: opaque, handed back to committed()/failed()
    token: object = None


class ChangeCapture(Protocol):
    """The seam between :class:`Database` writes and a change log.

    For each write, :class:`Database` calls :meth:`prepare` once (before anything is sent;
    if it raises or returns something else than a :class:`CapturedWrite`, the write is not
    attempted and nothing else is called), then sends the data
    statement plus ``write.statements`` as ONE logged batch with ``write.timestamp``, then
    calls exactly one of :meth:`committed` (the batch succeeded) or :meth:`failed` (it raised,
    or the caller was cancelled; a timed-out or cancelled batch *may* still be applied). The
    two are plain functions called on the Trio thread; they must not raise.
    """

    async def prepare(self, change: Change) -> CapturedWrite: ...

    def committed(self, change: Change, write: CapturedWrite) -> None: ...

    def failed(self, change: Change, write: CapturedWrite, exc: BaseException) -> None: ...


# -- database -------------------------------------------------------------------------------

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
        self.keyspace = _check_name(keyspace, "keyspace")
        self.capture = capture

    def _table(self, table: Table) -> str:
        if not isinstance(table, Table):
            raise TypeError(f"expected a Table, got {type(table).__name__}")
        return f"{_q(self.keyspace)}.{_q(table.name)}"

    async def create_table(self, table: Table) -> None:
        """``CREATE TABLE IF NOT EXISTS`` for `table` (an existing table is left as it is,
        even if its definition differs)."""
        name = self._table(table)
        columns = ", ".join(f"{_q(c.name)} {c.cql_type}" for c in table.columns.values())
        partition = ", ".join(_q(c) for c in table.partition_key)
        key = ", ".join([f"({partition})", *(_q(c) for c in table.clustering_key)])
        options = []
        if table.clustering_key:
            order = ", ".join(f"{_q(c)} {d}" for c, d in table.clustering_order.items())
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
        row = table._values(values, "values", allow_key=True)
        key = table._key_values(
            {k: v for k, v in values.items() if k in table.primary_key},
            table.primary_key,
            "primary key",
        )
        using, params = _using(ttl)
        columns = list(row)
        cql = (
            f"INSERT INTO {name} ({', '.join(_q(c) for c in columns)}) "
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
        key_values = table._key_values(key, table.primary_key, "primary key")
        changed = table._values(values, "values", allow_key=False)
        if not changed:
            raise ValueError(f"update of {table.name}: no column to set")
        using, params = _using(ttl)
        sets = ", ".join(f"{_q(c)} = ?" for c in changed)
        where = " AND ".join(f"{_q(c)} = ?" for c in key_values)
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
        key_values = table._key_values(key, table.primary_key, "primary key")
        where = " AND ".join(f"{_q(c)} = ?" for c in key_values)
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
        key_values = table._key_values(key, table.primary_key, "primary key")
        columns = ", ".join(_q(c) for c in table.columns)
        where = " AND ".join(f"{_q(c)} = ?" for c in key_values)
        rows = await self.session.execute(
            f"SELECT {columns} FROM {name} WHERE {where}", list(key_values.values())
        )
        return table._from_driver(rows[0]) if rows else None

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
        key_values = table._key_values(partition, table.partition_key, "partition key")
        clauses = [f"{_q(c)} = ?" for c in key_values]
        params: list[Any] = list(key_values.values())
        restricted = _clustering_where(table, where)
        for column, op, value in restricted:
            clauses.append(f"{_q(column)} {_WHERE_OPS[op]} ?")
            params.append(value)
        columns = ", ".join(_q(c) for c in table.columns)
        cql = f"SELECT {columns} FROM {name} WHERE {' AND '.join(clauses)}"
        if order is not None:
            if order not in ("asc", "desc"):
                raise ValueError(f"order must be 'asc', 'desc' or None, got {order!r}")
            if not table.clustering_key:
                raise ValueError(f"table {table.name!r} has no clustering column to order by")
            cql += f" ORDER BY {_q(table.clustering_key[0])} {order.upper()}"
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ValueError(f"limit must be a positive int, got {limit!r}")
            cql += " LIMIT ?"
            params.append(limit)
        return _TableRows(table, self.session.iterate(cql, params, page_size=page_size))


def _using(ttl: int | None) -> tuple[str, list[Any]]:
    if ttl is None:
        return "", []
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= _MAX_TTL:
        raise ValueError(f"ttl must be an int of seconds, 1 to {_MAX_TTL}, got {ttl!r}")
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
        return self._table._from_driver(await self._rows.__anext__())

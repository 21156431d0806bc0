"""CQL names and column types: checks, canonical Python values, JSON both ways.

Everything here is pure (no requests): :mod:`._table` builds :class:`Column` and
:class:`Table` on it, :mod:`._database` quotes the names it checked.

* :func:`check_name`: identifiers (``[a-z][a-z0-9_]{0,47}``) for keyspaces, tables, columns;
  :func:`quote` quotes a checked name so reserved words stay usable as column names.
* :func:`parse_type`: a column's CQL type (a scalar, or a ``list``/``set``/``map`` of
  scalars) as a :class:`CqlType`, which checks Python values and converts them to and from
  JSON-safe values.

Canonical Python values (what reads return and what a ``Change`` carries): ``timestamp`` is
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from cassandra.util import Date as _DriverDate
from cassandra.util import SortedSet as _DriverSortedSet

__all__ = ["MAX_TTL", "CqlType", "Kind", "check_name", "parse_type", "quote"]

_NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")
MAX_TTL = 630_720_000  # Cassandra's limit (20 years)
_MAX_JSON_TEXT = 256  # longest string accepted for a uuid/timestamp/date/decimal from JSON
#: what a column holds: one scalar, or a collection of scalars
Kind = Literal["scalar", "list", "set", "map"]


def check_name(name: object, what: str) -> str:
    """`name` if it is a valid identifier, else ``ValueError`` naming `what` (``"table"``...)."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise ValueError(
            f"invalid {what} name {name!r}: use a lower-case letter, then lower-case letters, "
            "digits or '_' (48 characters at most)"
        )
    return name


def quote(name: str) -> str:
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
class CqlType:
    """A parsed column type: a scalar, or a list/set/map of scalars (:func:`parse_type`).

    Its methods raise ``TypeError`` (wrong Python type) or ``ValueError`` (bad value) with a
    message that names neither table nor column: ``Table`` adds those.
    """

    kind: Kind
    items: tuple[_Scalar, ...]

    @property
    def rangeable(self) -> bool:
        """Whether gt/gte/lt/lte make sense for values of this type (scalars only)."""
        return self.kind == "scalar" and self.items[0].rangeable

    @property
    def cql(self) -> str:
        names = ", ".join(t.name for t in self.items)
        return names if self.kind == "scalar" else f"{self.kind}<{names}>"

    def normalize(self, value: Any) -> Any:
        """`value` (not ``None``) checked and in canonical form (the module doc)."""
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
        """`value` as a JSON-safe value (``None`` stays ``None``); see ``Table.to_json``."""
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
        """The Python value of a JSON value (null -> ``None``); raises ``ValueError`` only."""
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


def parse_type(cql_type: object, column: str) -> CqlType:
    """`cql_type` (``"int"``, ``"list<text>"``, ``"map<text, int>"``...) parsed; ``TypeError``
    or ``ValueError`` naming `column` for a type this layer does not support."""
    if not isinstance(cql_type, str):
        raise TypeError(f"column {column!r}: the type must be a string, got {cql_type!r}")
    compact = re.sub(r"\s+", "", cql_type.lower())
    scalar = _SCALARS.get(compact)
    if scalar is not None:
        return CqlType("scalar", (scalar,))
    match = _COLLECTION.fullmatch(compact)
    if match is not None:
        names = [match.group(2)] if match.group(1) else [match.group(3), match.group(4)]
        if all(n in _SCALARS for n in names):
            kind: Kind = match.group(1) or "map"  # type: ignore[assignment]
            return CqlType(kind, tuple(_SCALARS[n] for n in names))
    known = ", ".join(sorted(_SCALARS))
    raise ValueError(
        f"column {column!r}: unsupported type {cql_type!r} (use one of {known}, or "
        "list<...>, set<...>, map<..., ...> of those)"
    )

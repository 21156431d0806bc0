"""Subscription filters (trio_rt._core.filters): parsing, errors, matching; Hypothesis
properties."""

from __future__ import annotations

import datetime as dt
import operator
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_rt._core.filters import MAX_FILTER_COLUMNS, MAX_IN_VALUES, Clause, parse_filters
from trio_rt._core.protocol import ErrorCode, ProtocolError
from trio_rt.cassandra import Table

POSTS = Table(
    "posts",
    {
        "author": "text",
        "id": "timeuuid",
        "score": "int",
        "rating": "double",
        "published": "boolean",
        "created": "timestamp",
        "day": "date",
        "price": "decimal",
        "owner": "uuid",
        "tags": "set<text>",
        "tag": "text",
    },
    partition_key="author",
    clustering_key="id",
)


def parse(raw: object) -> Any:
    return parse_filters(raw, POSTS, request_id=7)


def test_capability_shaped_filter() -> None:
    f = parse({"author": "ann", "score": {"gte": 10}, "tag": {"in": ["a", "b"]}})
    assert f.clauses == (
        Clause("author", "eq", "ann"),
        Clause("score", "gte", 10),
        Clause("tag", "in", ("a", "b")),
    )
    assert f.matches({"author": "ann", "score": 10, "tag": "b", "other": 1})
    assert not f.matches({"author": "ann", "score": 9, "tag": "b"})
    assert not f.matches({"author": "bob", "score": 10, "tag": "b"})
    assert not f.matches({"author": "ann", "score": 10, "tag": "c"})
    assert not f.matches({"author": "ann", "tag": "b"})  # absent column: no match
    assert f.to_json() == {"author": {"eq": "ann"}, "score": {"gte": 10}, "tag": {"in": ["a", "b"]}}
    assert f.columns == {"author", "score", "tag"}


def test_values_are_coerced_with_the_column_type() -> None:
    owner = uuid.uuid4()
    f = parse(
        {
            "created": {"gte": "2024-01-01T00:00:00Z", "lt": "2024-01-02T01:00:00+01:00"},
            "day": "2024-01-01",
            "price": {"gt": "9.99"},
            "owner": str(owner),
            "rating": {"lte": 4},
        }
    )
    row = {
        "created": dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC),
        "day": dt.date(2024, 1, 1),
        "price": Decimal("10"),
        "owner": owner,
        "rating": 3.5,
    }
    assert f.matches(row)
    assert not f.matches({**row, "created": dt.datetime(2024, 1, 2, tzinfo=dt.UTC)})
    assert not f.matches({**row, "price": Decimal("9.99")})
    assert f.to_json()["created"] == {
        "gte": "2024-01-01T00:00:00.000Z",
        "lt": "2024-01-02T00:00:00.000Z",
    }
    assert f.to_json()["owner"] == {"eq": str(owner)}


def test_empty_and_null() -> None:
    assert parse(None).matches({}) and parse({}).matches({"x": 1})
    f = parse({"tag": None})
    assert f.matches({"tag": None}) and not f.matches({"tag": "a"}) and not f.matches({})
    f = parse({"score": {"in": [1, None]}})
    assert f.matches({"score": None}) and f.matches({"score": 1}) and not f.matches({"score": 2})
    assert not parse({"score": {"gt": 1}}).matches({"score": None})


@pytest.mark.parametrize(
    ("raw", "code", "match"),
    [
        ([], ErrorCode.INVALID_FIELD, "must be an object"),
        ("author=ann", ErrorCode.INVALID_FIELD, "must be an object"),
        ({"nope": 1}, ErrorCode.INVALID_FIELD, "no column 'nope'"),
        ({"Author": "ann"}, ErrorCode.INVALID_FIELD, "no column 'Author'"),
        ({"tags": "a"}, ErrorCode.INVALID_FIELD, "'tags' is a collection"),
        ({"score": {}}, ErrorCode.INVALID_FIELD, "empty operator"),
        ({"score": {"like": 1}}, ErrorCode.INVALID_FIELD, "unknown operator 'like'"),
        ({"score": "10"}, ErrorCode.INVALID_FIELD, r"'score' \(eq\).*expected an integer"),
        ({"score": {"gt": 1.5}}, ErrorCode.INVALID_FIELD, "expected an integer"),
        ({"score": {"gt": None}}, ErrorCode.INVALID_FIELD, "null"),
        ({"score": {"in": []}}, ErrorCode.INVALID_FIELD, "non-empty array"),
        ({"score": {"in": 1}}, ErrorCode.INVALID_FIELD, "non-empty array"),
        ({"score": {"in": ["1"]}}, ErrorCode.INVALID_FIELD, "expected an integer"),
        ({"published": {"gt": True}}, ErrorCode.INVALID_FIELD, "'published' .* no order"),
        ({"owner": {"lt": str(uuid.uuid4())}}, ErrorCode.INVALID_FIELD, "no order"),
        ({"id": {"gte": str(uuid.uuid1())}}, ErrorCode.INVALID_FIELD, "no order"),
        ({"id": str(uuid.uuid4())}, ErrorCode.INVALID_FIELD, "version 1"),
        ({"created": {"gt": "yesterday"}}, ErrorCode.INVALID_FIELD, "ISO 8601"),
        ({"created": "0001-01-01T00:00:00+01:00"}, ErrorCode.INVALID_FIELD, "range in UTC"),
        ({"score": {"in": list(range(MAX_IN_VALUES + 1))}}, ErrorCode.TOO_LARGE, "at most 100"),
        (
            {f"c{i}": 1 for i in range(MAX_FILTER_COLUMNS + 1)},
            ErrorCode.TOO_LARGE,
            "at most 20",
        ),
    ],
)
def test_errors(raw: object, code: ErrorCode, match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as info:
        parse(raw)
    assert info.value.code == code
    assert info.value.request_id == 7


def test_limits_are_inclusive() -> None:
    parse({"score": {"in": list(range(MAX_IN_VALUES))}})
    table = Table("wide", {f"c{i}": "int" for i in range(MAX_FILTER_COLUMNS)}, "c0")
    parse_filters({f"c{i}": i for i in range(MAX_FILTER_COLUMNS)}, table)


@pytest.mark.parametrize(
    "name",
    [
        "author; DROP TABLE posts",
        'author" OR 1=1 --',
        "author'",
        "AUTHOR",
        "author ",
        "x" * 10_000,
        "",
        "__class__",
        "score.__init__",
    ],
)
def test_injection_looking_column_names_are_refused(name: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse({name: "ann"})
    assert info.value.code == ErrorCode.INVALID_FIELD
    assert len(info.value.message) < 200  # a long name is cut in the message


@pytest.mark.parametrize(
    "value", ["ann' OR '1'='1", "'; DROP KEYSPACE app; --", '"', "\x00", "ann\u202e"]
)
def test_injection_looking_values_are_plain_values(value: str) -> None:
    f = parse({"author": value, "tag": {"in": [value, "x"]}, "score": {"gte": 0}})
    assert f.matches({"author": value, "tag": value, "score": 0})
    assert not f.matches({"author": "ann", "tag": value, "score": 0})
    assert f.to_json()["author"] == {"eq": value}


# -- properties ---------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
column_names = st.sampled_from([*POSTS.columns, "nope", "", "author; --"]) | st.text(max_size=8)
op_names = st.sampled_from(["eq", "in", "gt", "gte", "lt", "lte", "like", "", "EQ"])
specs = json_values | st.dictionaries(op_names, json_values, max_size=4)
raw_filters = json_values | st.dictionaries(column_names, specs, max_size=6)


@given(raw_filters)
@settings(max_examples=500, deadline=None)
def test_parse_raises_only_protocol_errors(raw: object) -> None:
    try:
        f = parse(raw)
    except ProtocolError as exc:
        assert exc.code in (ErrorCode.INVALID_FIELD, ErrorCode.TOO_LARGE)
        assert exc.request_id == 7
        return
    # a parsed filter echoes, and its echo parses back to the same filter
    assert parse(f.to_json()).clauses == f.clauses


# A table of orderable scalars, Python values for them, and a reference matcher.
SMALL = Table(
    "small",
    {"i": "int", "t": "text", "d": "double", "b": "boolean", "ts": "timestamp"},
    partition_key="i",
)
# Small domains, so that random rows often satisfy random filters (and often do not).
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "i": st.integers(-2, 2),
    "t": st.sampled_from(["", "a", "b", "é"]),
    "d": st.sampled_from([-1.5, 0.5, 2.0]),
    "b": st.booleans(),
    "ts": st.sampled_from(
        [dt.datetime(2024, 1, d, tzinfo=dt.UTC) for d in (1, 2)]
        + [dt.datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=dt.UTC)]
    ),
}
RANGEABLE = {"i", "t", "d", "ts"}


@st.composite
def filter_and_rows(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A filter over SMALL in Python values ({column: [(op, value)]}) and some rows."""
    spec: dict[str, list[tuple[str, Any]]] = {}
    for column in draw(st.lists(st.sampled_from(sorted(VALUES)), unique=True, max_size=5)):
        ops = ["eq", "in", *(["gt", "gte", "lt", "lte"] if column in RANGEABLE else [])]
        clauses = []
        for op in draw(st.lists(st.sampled_from(ops), min_size=1, max_size=2)):
            nullable = VALUES[column] | st.none()  # eq/in null: matches a present None
            if op == "in":
                clauses.append((op, draw(st.lists(nullable, min_size=1, max_size=4))))
            else:
                clauses.append((op, draw(nullable if op == "eq" else VALUES[column])))
        spec[column] = clauses
    # every column present, then some dropped or set to None
    row = st.fixed_dictionaries({c: s for c, s in VALUES.items()})
    rows = draw(st.lists(row, max_size=8))
    for r in rows:
        for column in draw(st.lists(st.sampled_from(sorted(VALUES)), max_size=1)):
            if draw(st.booleans()):
                del r[column]
            else:
                r[column] = None
    return spec, rows


def reference_match(spec: dict[str, list[tuple[str, Any]]], row: dict[str, Any]) -> bool:
    compare = {"eq": operator.eq, "gt": operator.gt, "gte": operator.ge}
    compare |= {"lt": operator.lt, "lte": operator.le}
    for column, clauses in spec.items():
        if column not in row:
            return False
        for op, value in clauses:
            actual = row[column]
            if op == "in":
                if actual not in value:
                    return False
            elif op == "eq":
                if actual != value:
                    return False
            elif actual is None or not compare[op](actual, value):
                return False
    return True


@given(filter_and_rows())
@settings(max_examples=300, deadline=None)
def test_matches_agrees_with_a_reference(case: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    spec, rows = case
    raw: dict[str, Any] = {}
    for column, clauses in spec.items():
        ops: dict[str, Any] = {}
        for op, value in clauses:
            if op == "in":
                ops[op] = [SMALL.to_json({column: v})[column] for v in value]
            else:
                ops[op] = SMALL.to_json({column: value})[column]
        raw[column] = ops
    # the same op twice on a column: JSON objects keep the last one, and so does the reference
    effective = {c: list({op: v for op, v in clauses}.items()) for c, clauses in spec.items()}
    f = parse_filters(raw, SMALL)
    for row in rows:
        assert f.matches(row) == reference_match(effective, row), (raw, row)

"""The model layer (Table, Database, change capture, JSON bridging).

Pure tests first (definitions, value checks, JSON), then tests against a real Cassandra 5.0
node (`cassandra_endpoint`), each in its own keyspace.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from decimal import Decimal
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_rt.cassandra import (
    CapturedWrite,
    CassandraQueryError,
    CassandraSession,
    Change,
    Column,
    Database,
    Params,
    Table,
)

GUARD = 120  # s: deadlock guard for a whole test body

ALL_TYPES = {
    "k": "int",
    "t_text": "text",
    "t_ascii": "ascii",
    "t_varchar": "varchar",
    "t_tinyint": "tinyint",
    "t_smallint": "smallint",
    "t_bigint": "bigint",
    "t_varint": "varint",
    "t_float": "float",
    "t_double": "double",
    "t_boolean": "boolean",
    "t_uuid": "uuid",
    "t_timeuuid": "timeuuid",
    "t_timestamp": "timestamp",
    "t_date": "date",
    "t_decimal": "decimal",
    "t_blob": "blob",
    "t_list": "list<int>",
    "t_set": "set<text>",
    "t_map": "map<text, timestamp>",
    "t_imap": "map<int, boolean>",
}
SAMPLE: dict[str, Any] = {
    "k": 1,
    "t_text": "héllo 'quoted' \"x\"",
    "t_ascii": "plain",
    "t_varchar": "v",
    "t_tinyint": -128,
    "t_smallint": 32767,
    "t_bigint": 2**63 - 1,
    "t_varint": 10**30,
    "t_float": 1.5,
    "t_double": 0.1,
    "t_boolean": True,
    "t_uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "t_timeuuid": uuid.UUID("a7f8e3e0-c0de-11ee-8000-000000000001"),
    "t_timestamp": dt.datetime(2024, 2, 29, 12, 30, 45, 123000, tzinfo=dt.UTC),
    "t_date": dt.date(2024, 2, 29),
    "t_decimal": Decimal("12.3400"),
    "t_blob": b"\x00\xffbin",
    "t_list": [3, 1, 2],
    "t_set": {"b", "a"},
    "t_map": {"x": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)},
    "t_imap": {2: True, -1: False},
}
SAMPLE_JSON = {
    "k": 1,
    "t_text": "héllo 'quoted' \"x\"",
    "t_ascii": "plain",
    "t_varchar": "v",
    "t_tinyint": -128,
    "t_smallint": 32767,
    "t_bigint": 2**63 - 1,
    "t_varint": 10**30,
    "t_float": 1.5,
    "t_double": 0.1,
    "t_boolean": True,
    "t_uuid": "12345678-1234-5678-1234-567812345678",
    "t_timeuuid": "a7f8e3e0-c0de-11ee-8000-000000000001",
    "t_timestamp": "2024-02-29T12:30:45.123Z",
    "t_date": "2024-02-29",
    "t_decimal": "12.3400",
    "t_blob": "AP9iaW4=",
    "t_list": [3, 1, 2],
    "t_set": ["a", "b"],
    "t_map": {"x": "2020-01-01T00:00:00.000Z"},
    "t_imap": {"2": True, "-1": False},
}


def all_types_table() -> Table:
    return Table("all_types", ALL_TYPES, partition_key="k")


def posts_table(**options: Any) -> Table:
    return Table(
        "posts",
        [
            Column("author", "text"),
            Column("id", "timeuuid"),
            Column("title", "text"),
            Column("score", "int"),
            Column("tags", "set<text>"),
            # reserved words work as column names: every identifier is quoted
            Column("order", "int"),
        ],
        partition_key=["author"],
        clustering_key=["id"],
        clustering_order={"id": "DESC"},
        **options,
    )


# -- definitions ------------------------------------------------------------------------


def test_table_definition() -> None:
    table = Table(
        "events",
        {"a": "text", "b": "INT", "c": "Map < text , int >", "d": "timestamp"},
        partition_key=["a"],
        clustering_key=["b", "d"],
        clustering_order={"d": "desc"},
        default_ttl=3600,
    )
    assert table.primary_key == ("a", "b", "d")
    assert table.columns["b"].cql_type == "int"
    assert table.columns["c"].cql_type == "map<text, int>"
    assert table.clustering_order == {"b": "ASC", "d": "DESC"}
    assert table.default_ttl == 3600
    assert not table.capture_full_rows
    assert Table("x", {"k": "int"}, "k").primary_key == ("k",)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("Bad", {"k": "int"}, ["k"]), {}, ValueError, "invalid table name 'Bad'"),
        (("t; drop", {"k": "int"}, ["k"]), {}, ValueError, "invalid table name"),
        (("t", {"k-1": "int"}, ["k-1"]), {}, ValueError, "invalid column name 'k-1'"),
        (("t", {'k"': "int"}, ['k"']), {}, ValueError, "invalid column name"),
        (("t", {"k": "int", "v": "frozen<list<int>>"}, ["k"]), {}, ValueError, "column 'v'"),
        (("t", {"k": "int", "v": "list<list<int>>"}, ["k"]), {}, ValueError, "unsupported"),
        (("t", {"k": "int", "v": "counter"}, ["k"]), {}, ValueError, "unsupported type"),
        (("t", {"k": "int", "v": 5}, ["k"]), {}, TypeError, "column 'v'"),
        (("t", {"k": "int"}, ["x"]), {}, ValueError, "partition key column 'x'"),
        (("t", {"k": "int"}, []), {}, ValueError, "needs a partition key"),
        (("t", {}, ["k"]), {}, ValueError, "at least one column"),
        (("t", {"k": "int", "c": "int"}, ["k"], ["z"]), {}, ValueError, "clustering key"),
        (("t", {"k": "int", "c": "int"}, ["k"], ["k"]), {}, ValueError, "twice"),
        (("t", {"k": "list<int>"}, ["k"]), {}, ValueError, "collection type"),
        (
            ("t", {"k": "int", "c": "int"}, ["k"], ["c"]),
            {"clustering_order": {"k": "ASC"}},
            ValueError,
            "not a clustering column",
        ),
        (
            ("t", {"k": "int", "c": "int"}, ["k"], ["c"]),
            {"clustering_order": {"c": "UP"}},
            ValueError,
            "'ASC' or 'DESC'",
        ),
        (("t", {"k": "int"}, ["k"]), {"default_ttl": -1}, ValueError, "default_ttl"),
        (("t", {"k": "int"}, ["k"]), {"default_ttl": "1"}, ValueError, "default_ttl"),
        (("t", "k int", ["k"]), {}, TypeError, "columns must be"),
    ],
)
def test_table_definition_is_validated(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Table(*args, **kwargs)


def test_columns_defined_twice() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        Table("t", [Column("k", "int"), Column("k", "text")], ["k"])


# -- values and JSON ---------------------------------------------------------------------


def test_to_json_and_back() -> None:
    table = all_types_table()
    encoded = table.to_json(SAMPLE)
    assert encoded == SAMPLE_JSON
    json.dumps(encoded, allow_nan=False)  # strictly JSON
    decoded = {c: table.from_json(c, v) for c, v in json.loads(json.dumps(encoded)).items()}
    assert decoded == {c: table.normalize(c, v) for c, v in SAMPLE.items()}


def test_canonical_values() -> None:
    table = all_types_table()
    naive = dt.datetime(2024, 1, 1, 10, 0, 0, 123456)
    paris = dt.datetime(2024, 1, 1, 11, 0, 0, 123999, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    expected = dt.datetime(2024, 1, 1, 10, 0, 0, 123000, tzinfo=dt.UTC)
    assert table.normalize("t_timestamp", naive) == expected
    assert table.normalize("t_timestamp", paris) == expected
    assert table.to_json({"t_timestamp": paris}) == {"t_timestamp": "2024-01-01T10:00:00.123Z"}
    assert table.from_json("t_timestamp", "2024-01-01T11:00:00.123+01:00") == expected
    assert table.from_json("t_timestamp", "2024-01-01T10:00:00.123") == expected  # UTC
    assert table.normalize("t_float", 0.1) == pytest.approx(0.1, rel=1e-7)
    assert table.normalize("t_float", 0.1) != 0.1  # rounded to 32 bits, as Cassandra stores
    assert table.normalize("t_decimal", 5) == Decimal(5)
    assert table.normalize("t_set", frozenset({"a"})) == {"a"}
    assert table.normalize("t_list", (1, 2)) == [1, 2]
    assert table.normalize("t_text", None) is None
    special = {"t_double": math.inf, "t_float": -math.inf}
    assert table.to_json(special) == {"t_double": "Infinity", "t_float": "-Infinity"}
    assert table.from_json("t_double", "NaN") != table.from_json("t_double", "NaN")  # NaN
    assert table.to_json({"t_double": math.nan}) == {"t_double": "NaN"}


@pytest.mark.parametrize(
    ("column", "value", "error", "match"),
    [
        ("k", "1", TypeError, r"all_types\.k \(int\): expected int, got str"),
        ("k", True, TypeError, "got bool"),
        ("k", 2**31, ValueError, "out of range"),
        ("t_tinyint", 128, ValueError, "out of range"),
        ("t_bigint", 2**63, ValueError, "out of range"),
        ("t_float", 1e39, ValueError, "32-bit float"),
        ("t_float", "1.5", TypeError, "t_float"),
        ("t_ascii", "é", ValueError, "ASCII"),
        ("t_boolean", 1, TypeError, "expected bool"),
        ("t_uuid", "12345678-1234-5678-1234-567812345678", TypeError, "uuid.UUID"),
        ("t_timeuuid", uuid.uuid4(), ValueError, "version 1"),
        ("t_timestamp", dt.date(2024, 1, 1), TypeError, "datetime"),
        ("t_timestamp", 1700000000, TypeError, "datetime"),
        ("t_date", dt.datetime(2024, 1, 1), TypeError, "datetime.date"),
        ("t_decimal", 1.5, TypeError, "Decimal"),
        ("t_decimal", Decimal("NaN"), ValueError, "finite"),
        ("t_blob", "text", TypeError, "bytes"),
        ("t_list", {1, 2}, TypeError, "expected a list"),
        ("t_list", [1, None], ValueError, "null"),
        ("t_list", ["a"], TypeError, "expected int"),
        ("t_set", ["a"], TypeError, "expected a set"),
        ("t_set", "ab", TypeError, "expected a set"),
        ("t_map", {"x": "2020"}, TypeError, "datetime"),
        ("t_map", [("x", 1)], TypeError, "expected a dict"),
        ("nope", 1, ValueError, "has no column 'nope'"),
    ],
)
def test_python_values_are_checked(
    column: str, value: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        all_types_table().normalize(column, value)


@pytest.mark.parametrize(
    ("column", "value", "match"),
    [
        ("k", "1", r"all_types\.k \(int\): expected an integer, got a string"),
        ("k", 1.0, "expected an integer, got a number"),
        ("k", True, "got a boolean"),
        ("k", 2**40, "out of range"),
        ("t_double", "1.5", "expected a number"),
        ("t_double", [], "expected a number, got an array"),
        ("t_boolean", "true", "true or false"),
        ("t_uuid", "not-a-uuid", "expected a UUID"),
        ("t_uuid", 5, "as a string"),
        ("t_uuid", "a" * 1000, "1000 characters"),
        ("t_timeuuid", str(uuid.uuid4()), "version 1"),
        ("t_timestamp", "yesterday", "ISO 8601 timestamp"),
        ("t_timestamp", 1700000000000, "as a string"),
        ("t_timestamp", "0001-01-01T00:00:00+05:00", "outside Python's datetime range"),
        ("t_date", "2024-02-30", "ISO 8601 date"),
        ("t_decimal", "abc", "expected a decimal"),
        ("t_decimal", "Infinity", "finite"),
        ("t_blob", "***", "base64"),
        ("t_list", "1,2", "expected an array"),
        ("t_list", [1, None], "null"),
        ("t_set", [1], "expected a string"),
        ("t_map", ["x"], "expected an object"),
        ("t_imap", {"one": True}, "integer key"),
        ("t_imap", {"1": None}, "null"),
        ("unknown", 1, "has no column 'unknown'"),
    ],
)
def test_from_json_errors(column: str, value: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        all_types_table().from_json(column, value)


timestamps = st.datetimes(timezones=st.none() | st.just(dt.UTC) | st.timezones())
PYTHON_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "t_text": st.text(),
    "t_ascii": st.text(st.characters(max_codepoint=127)),
    "t_tinyint": st.integers(-(2**7), 2**7 - 1),
    "t_smallint": st.integers(-(2**15), 2**15 - 1),
    "k": st.integers(-(2**31), 2**31 - 1),
    "t_bigint": st.integers(-(2**63), 2**63 - 1),
    "t_varint": st.integers(-(10**100), 10**100),
    "t_float": st.floats(width=32, allow_nan=False),
    "t_double": st.floats(allow_nan=False),
    "t_boolean": st.booleans(),
    "t_uuid": st.uuids(),
    "t_timeuuid": st.uuids(version=1),
    "t_timestamp": timestamps,
    "t_date": st.dates(),
    "t_decimal": st.decimals(allow_nan=False, allow_infinity=False),
    "t_blob": st.binary(),
    "t_list": st.lists(st.integers(-(2**31), 2**31 - 1)),
    "t_set": st.sets(st.text()),
    "t_map": st.dictionaries(st.text(), timestamps),
    "t_imap": st.dictionaries(st.integers(-(2**31), 2**31 - 1), st.booleans()),
}


@given(st.data())
@settings(max_examples=400, deadline=None)
def test_json_round_trip_property(data: st.DataObject) -> None:
    table = all_types_table()
    column = data.draw(st.sampled_from(sorted(PYTHON_VALUES)))
    value = data.draw(PYTHON_VALUES[column])
    try:
        canonical = table.normalize(column, value)
    except ValueError:  # a datetime that leaves Python's range once moved to UTC
        assert column in ("t_timestamp", "t_map")
        return
    wire = json.loads(json.dumps(table.to_json({column: value}), allow_nan=False))[column]
    assert table.from_json(column, wire) == canonical
    assert table.normalize(column, canonical) == canonical  # canonical is a fixed point


def test_the_public_checks_database_uses() -> None:
    """Table.normalize_values / normalize_key / from_driver and Column's value methods: what
    Database builds its statements from (pure: no request)."""
    table = posts_table()
    tid = uuid.UUID("a7f8e3e0-c0de-11ee-8000-000000000001")
    naive = dt.datetime(2024, 1, 1, 12, 0, 0, 123456)
    assert table.normalize_values({"score": 3, "tags": frozenset({"a"}), "title": None}) == {
        "score": 3,
        "tags": {"a"},
        "title": None,
    }
    assert table.normalize_values({"author": "x"}) == {"author": "x"}
    with pytest.raises(ValueError, match=r"posts\.author is a primary key column"):
        table.normalize_values({"author": "x"}, allow_key=False)
    with pytest.raises(ValueError, match="no column 'nope'"):
        table.normalize_values({"nope": 1})
    with pytest.raises(TypeError, match="values must be a mapping"):
        table.normalize_values([("score", 1)])
    with pytest.raises(TypeError, match=r"posts\.score \(int\): expected int, got str"):
        table.normalize_values({"score": "1"})
    # Keys come back complete, in key order, canonical.
    assert list(table.normalize_key({"id": tid, "author": "x"})) == ["author", "id"]
    assert table.normalize_key({"author": "x"}, partition=True) == {"author": "x"}
    with pytest.raises(ValueError, match=r"posts\.id is missing from the primary key"):
        table.normalize_key({"author": "x"})
    with pytest.raises(ValueError, match=r"posts\.id is not in the partition key \(author\)"):
        table.normalize_key({"author": "x", "id": tid}, partition=True)
    with pytest.raises(ValueError, match=r"posts\.author is part of the primary key: it cannot"):
        table.normalize_key({"author": None, "id": tid})
    with pytest.raises(TypeError, match="partition key must be a mapping"):
        table.normalize_key("x", partition=True)
    # A driver row: canonical values, None and unknown columns as they are.
    row = table.from_driver({"author": "x", "tags": frozenset({"b"}), "title": None, "ttl": 7})
    assert row == {"author": "x", "tags": {"b"}, "title": None, "ttl": 7}
    assert type(row["tags"]) is set
    # Column: the same checks without the table's name.
    column = Column("at", "timestamp")
    assert column.kind == "scalar" and column.rangeable
    assert column.normalize(None) is None
    assert column.normalize(naive) == dt.datetime(2024, 1, 1, 12, 0, 0, 123000, tzinfo=dt.UTC)
    assert column.to_json(naive) == "2024-01-01T12:00:00.123Z"
    assert column.from_json("2024-01-01T12:00:00.123Z") == column.normalize(naive)
    with pytest.raises(TypeError, match=r"^expected datetime\.datetime, got str$"):
        column.normalize("2024-01-01")
    tags = table.column("tags")
    assert tags.kind == "set" and not tags.rangeable
    assert not Column("flag", "boolean").rangeable
    assert Column("m", "map<text, int>").kind == "map"


def test_to_json_refuses_unknown_columns_and_wrong_types() -> None:
    table = all_types_table()
    with pytest.raises(ValueError, match="no column 'x'"):
        table.to_json({"x": 1})
    with pytest.raises(TypeError, match="t_uuid"):
        table.to_json({"t_uuid": 5})


# -- against Cassandra --------------------------------------------------------------------


class LogCapture:
    """A test capture: each change also writes a row into `changelog`, in the same batch."""

    def __init__(self, keyspace: str, *, fail_with_null: bool = False) -> None:
        self.keyspace = keyspace
        self.fail_with_null = fail_with_null
        self.next_timestamp = 1_700_000_000_000_000
        self.prepared: list[Change] = []
        self.committed_calls: list[tuple[Change, CapturedWrite]] = []
        self.failed_calls: list[tuple[Change, CapturedWrite, BaseException]] = []
        self.cancel: trio.CancelScope | None = None
        self.refuse = False

    async def create(self, session: CassandraSession) -> None:
        await session.execute(
            f"CREATE TABLE {self.keyspace}.changelog (tbl text, ts bigint, op text, "
            "data text, PRIMARY KEY (tbl, ts))"
        )

    async def prepare(self, change: Change) -> CapturedWrite:
        await trio.lowlevel.checkpoint()
        if self.refuse:
            raise RuntimeError("capture refused")
        if self.cancel is not None:
            self.cancel.cancel()
        self.prepared.append(change)
        self.next_timestamp += 1
        ts = self.next_timestamp
        table = None if self.fail_with_null else change.table
        data = json.dumps(sorted(change.data), separators=(",", ":"))
        statement: tuple[str, Params] = (
            f"INSERT INTO {self.keyspace}.changelog (tbl, ts, op, data) VALUES (?, ?, ?, ?)",
            (table, ts, change.operation, data),
        )
        return CapturedWrite(timestamp=ts, statements=[statement], token=("tok", ts))

    def committed(self, change: Change, write: CapturedWrite) -> None:
        self.committed_calls.append((change, write))

    def failed(self, change: Change, write: CapturedWrite, exc: BaseException) -> None:
        self.failed_calls.append((change, write, exc))


async def test_all_types_round_trip(session: CassandraSession, keyspace: str) -> None:
    with trio.fail_after(GUARD):
        db = Database(session, keyspace)
        table = all_types_table()
        await db.create_table(table)
        await db.create_table(table)  # IF NOT EXISTS
        assert await db.insert(table, SAMPLE) is None  # no capture: no Change
        row = await db.get(table, {"k": 1})
        assert row == {c: table.normalize(c, v) for c, v in SAMPLE.items()}
        assert row is not None and row["t_timestamp"].tzinfo is dt.UTC
        assert isinstance(row["t_set"], set) and type(row["t_map"]) is dict
        assert table.to_json(row) == SAMPLE_JSON
        assert await db.get(table, {"k": 2}) is None
        # only some columns; the others read back as None (empty collections too)
        await db.insert(table, {"k": 2, "t_text": "x", "t_list": []})
        row = await db.get(table, {"k": 2})
        assert row is not None and row["t_text"] == "x"
        assert row["t_list"] is None and row["t_uuid"] is None


async def test_writes_reads_and_queries(session: CassandraSession, keyspace: str) -> None:
    with trio.fail_after(GUARD):
        db = Database(session, keyspace)
        posts = posts_table()
        await db.create_table(posts)
        ids = [uuid.uuid1() for _ in range(5)]  # increasing times
        for n, id_ in enumerate(ids):
            await db.insert(posts, {"author": "ann", "id": id_, "title": f"t{n}", "score": n})
        await db.insert(posts, {"author": "bob", "id": uuid.uuid1(), "title": "b", "order": 1})

        async def titles(**kw: Any) -> list[str]:
            return [r["title"] async for r in db.query(posts, {"author": "ann"}, **kw)]

        assert await titles() == ["t4", "t3", "t2", "t1", "t0"]  # clustering order DESC
        assert await titles(order="asc") == ["t0", "t1", "t2", "t3", "t4"]
        assert await titles(order="desc", limit=2) == ["t4", "t3"]
        assert await titles(where={"id": {"gt": ids[1], "lte": ids[3]}}) == ["t3", "t2"]
        assert await titles(where={"id": {"eq": ids[0]}}) == ["t0"]
        assert await titles(limit=3, page_size=1) == ["t4", "t3", "t2"]

        await db.update(posts, {"author": "ann", "id": ids[0]}, {"score": 50, "tags": {"x"}})
        row = await db.get(posts, {"author": "ann", "id": ids[0]})
        assert row is not None
        assert (row["title"], row["score"], row["tags"]) == ("t0", 50, {"x"})
        await db.update(posts, {"author": "ann", "id": ids[0]}, {"title": None})  # cell deleted
        row = await db.get(posts, {"author": "ann", "id": ids[0]})
        assert row is not None and row["title"] is None and row["score"] == 50
        await db.delete(posts, {"author": "ann", "id": ids[0]})
        assert await db.get(posts, {"author": "ann", "id": ids[0]}) is None
        assert len(await titles()) == 4


async def test_values_are_bound_never_spliced(session: CassandraSession, keyspace: str) -> None:
    with trio.fail_after(GUARD):
        db = Database(session, keyspace)
        posts = posts_table()
        await db.create_table(posts)
        evil = f"x'); DROP KEYSPACE {keyspace}; --"
        id_ = uuid.uuid1()
        await db.insert(posts, {"author": evil, "id": id_, "title": evil})
        row = await db.get(posts, {"author": evil, "id": id_})
        assert row is not None and row["title"] == evil
        assert [r["title"] async for r in db.query(posts, {"author": evil})] == [evil]


async def test_bad_input_is_refused_before_any_query(
    session: CassandraSession, keyspace: str
) -> None:
    db = Database(session, keyspace)
    posts = posts_table()
    await db.create_table(posts)
    key = {"author": "ann", "id": uuid.uuid1()}
    requests = session.stats.requests
    cases: list[tuple[Any, type[Exception], str]] = [
        (db.insert(posts, {"author": "ann", "title": "x"}), ValueError, r"posts\.id is missing"),
        (db.insert(posts, {**key, "nope": 1}), ValueError, "no column 'nope'"),
        (db.insert(posts, {**key, "score": "10"}), TypeError, r"posts\.score \(int\)"),
        (db.insert(posts, {**key, "author": None}), ValueError, "cannot be None"),
        (db.insert(posts, {**key}, ttl=0), ValueError, "ttl"),
        (db.update(posts, key, {}), ValueError, "no column to set"),
        (db.update(posts, key, {"author": "bob"}), ValueError, "primary key column"),
        (db.update(posts, {"author": "ann"}, {"score": 1}), ValueError, r"posts\.id is missing"),
        (db.update(posts, {**key, "score": 1}, {"score": 1}), ValueError, "not in the primary"),
        (db.delete(posts, {"id": key["id"]}), ValueError, "author is missing"),
        (db.delete(posts, {**key, "id": "x"}), TypeError, "uuid.UUID"),
        (db.get(posts, {"author": 5, "id": key["id"]}), TypeError, r"posts\.author"),
        (db.get(posts, "ann"), TypeError, "mapping"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            await call
    queries: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"where": {"title": {"eq": "x"}}}, ValueError, "not a clustering column"),
        ({"where": {"id": {"like": "x"}}}, ValueError, "unknown operator 'like'"),
        ({"where": {"id": {"eq": key["id"], "gt": key["id"]}}}, ValueError, "eq cannot"),
        ({"where": {"id": {"gt": "x"}}}, TypeError, "uuid.UUID"),
        ({"where": {"id": {"gt": None}}}, ValueError, "cannot be None"),
        ({"order": "up"}, ValueError, "order must be"),
        ({"limit": 0}, ValueError, "limit"),
    ]
    for options, error, match in queries:
        with pytest.raises(error, match=match):
            db.query(posts, {"author": "ann"}, **options)
    with pytest.raises(ValueError, match="not in the partition key"):
        db.query(posts, {"author": "ann", "id": key["id"]})
    with pytest.raises(ValueError, match="no clustering column"):
        db.query(Table("flat", {"k": "int"}, "k"), {"k": 1}, order="asc")
    assert session.stats.requests == requests


async def test_where_must_restrict_a_clustering_prefix(
    session: CassandraSession, keyspace: str
) -> None:
    db = Database(session, keyspace)
    table = Table("ev", {"k": "int", "a": "int", "b": "int"}, "k", ["a", "b"])
    with pytest.raises(ValueError, match="prefix"):
        db.query(table, {"k": 1}, where={"b": {"eq": 1}})
    with pytest.raises(ValueError, match="only the last"):
        db.query(table, {"k": 1}, where={"a": {"gt": 1}, "b": {"eq": 1}})
    await db.create_table(table)
    for a in range(3):
        for b in range(3):
            await db.insert(table, {"k": 1, "a": a, "b": b})
    rows = [
        (r["a"], r["b"])
        async for r in db.query(table, {"k": 1}, where={"a": {"eq": 1}, "b": {"gte": 1}})
    ]
    assert rows == [(1, 1), (1, 2)]
    rows = [(r["a"], r["b"]) async for r in db.query(table, {"k": 1}, order="desc", limit=2)]
    assert rows == [(2, 2), (2, 1)]


async def test_ttl(session: CassandraSession, keyspace: str) -> None:
    db = Database(session, keyspace)
    table = Table("t", {"k": "int", "v": "text"}, "k", default_ttl=1000)
    await db.create_table(table)
    await db.insert(table, {"k": 1, "v": "a"}, ttl=500)
    await db.insert(table, {"k": 2, "v": "b"})
    await db.update(table, {"k": 3}, {"v": "c"}, ttl=700)
    for k, low, high in [(1, 400, 500), (2, 900, 1000), (3, 600, 700)]:
        rows = await session.execute(f"SELECT TTL(v) AS ttl FROM {keyspace}.t WHERE k = ?", (k,))
        assert low <= rows[0]["ttl"] <= high


# -- change capture -------------------------------------------------------------------------


async def changelog(session: CassandraSession, keyspace: str) -> list[dict[str, Any]]:
    return await session.execute(
        f"SELECT ts, op, data, WRITETIME(op) AS wt FROM {keyspace}.changelog WHERE tbl = ?",
        ("posts",),
    )


async def test_capture_writes_change_and_data_in_one_batch(
    session: CassandraSession, keyspace: str
) -> None:
    with trio.fail_after(GUARD):
        capture = LogCapture(keyspace)
        await capture.create(session)
        db = Database(session, keyspace, capture=capture)
        posts = posts_table()
        await db.create_table(posts)
        id_ = uuid.uuid1()
        key = {"author": "ann", "id": id_}

        change = await db.insert(posts, {**key, "title": "hi", "score": 1})
        assert change == Change("posts", "insert", key, {**key, "title": "hi", "score": 1})
        change = await db.update(posts, key, {"score": 2})
        assert change == Change("posts", "update", key, {**key, "score": 2})
        change = await db.delete(posts, key)
        assert change == Change("posts", "delete", key, key)

        assert [c for c, _ in capture.committed_calls] == capture.prepared
        assert [w.token for _, w in capture.committed_calls] == [
            ("tok", capture.next_timestamp - n) for n in (2, 1, 0)
        ]
        assert capture.failed_calls == []
        log = await changelog(session, keyspace)
        assert [r["op"] for r in log] == ["insert", "update", "delete"]
        assert [r["wt"] for r in log] == [r["ts"] for r in log]  # written USING the timestamp
        # the data row is written with the capture's timestamp too
        assert await db.get(posts, key) is None
        await db.insert(posts, {**key, "title": "again"})
        rows = await session.execute(
            f"SELECT WRITETIME(title) AS wt FROM {keyspace}.posts WHERE author = ? AND id = ?",
            ("ann", id_),
        )
        assert rows == [{"wt": capture.next_timestamp}]


async def test_capture_batch_is_atomic(session: CassandraSession, keyspace: str) -> None:
    with trio.fail_after(GUARD):
        capture = LogCapture(keyspace, fail_with_null=True)  # the changelog insert fails
        await capture.create(session)
        db = Database(session, keyspace, capture=capture)
        posts = posts_table()
        await db.create_table(posts)
        key = {"author": "ann", "id": uuid.uuid1()}
        with pytest.raises(CassandraQueryError):
            await db.insert(posts, {**key, "title": "hi"})
        assert await db.get(posts, key) is None  # neither the data row...
        assert await session.execute(f"SELECT * FROM {keyspace}.changelog") == []  # ...nor log
        assert capture.committed_calls == []
        [(change, write, exc)] = capture.failed_calls
        assert change.operation == "insert" and isinstance(exc, CassandraQueryError)
        assert write.token == ("tok", capture.next_timestamp)


async def test_capture_prepare_failure_and_cancel(session: CassandraSession, keyspace: str) -> None:
    with trio.fail_after(GUARD):
        capture = LogCapture(keyspace)
        await capture.create(session)
        db = Database(session, keyspace, capture=capture)
        posts = posts_table()
        await db.create_table(posts)
        key = {"author": "ann", "id": uuid.uuid1()}
        capture.refuse = True
        with pytest.raises(RuntimeError, match="capture refused"):
            await db.insert(posts, {**key, "title": "hi"})
        assert capture.failed_calls == [] and capture.committed_calls == []  # never attempted
        capture.refuse = False
        prepare = capture.prepare

        async def wrong(change: Change) -> Any:
            return (await prepare(change)).statements

        capture.prepare = wrong  # type: ignore[method-assign]
        with pytest.raises(TypeError, match="must return a CapturedWrite, got list"):
            await db.insert(posts, {**key, "title": "hi"})
        capture.prepare = prepare  # type: ignore[method-assign]
        assert capture.failed_calls == [] and capture.committed_calls == []
        with trio.CancelScope() as scope:
            capture.cancel = scope  # cancelled while the capture prepares
            await db.insert(posts, {**key, "title": "hi"})
        assert scope.cancelled_caught
        [(change, _, exc)] = capture.failed_calls
        assert change.operation == "insert" and isinstance(exc, trio.Cancelled)
        assert capture.committed_calls == []
        capture.cancel = None
        assert await db.get(posts, key) is None  # a batch cancelled before sending: not sent
        assert await session.execute(f"SELECT * FROM {keyspace}.changelog") == []


async def test_capture_full_rows(session: CassandraSession, keyspace: str) -> None:
    with trio.fail_after(GUARD):
        capture = LogCapture(keyspace)
        await capture.create(session)
        db = Database(session, keyspace, capture=capture)
        posts = posts_table(capture_full_rows=True)
        await db.create_table(posts)
        key = {"author": "ann", "id": uuid.uuid1()}
        await db.insert(posts, {**key, "title": "hi", "score": 1})
        change = await db.update(posts, key, {"score": 2})
        assert change is not None and change.key == key
        full = {**key, "title": "hi", "score": 2, "tags": None, "order": None}
        assert change.data == full
        # a row that does not exist yet: the merged row is just key + values
        other = {"author": "bob", "id": uuid.uuid1()}
        change = await db.update(posts, other, {"title": "new"})
        assert change is not None and change.data == {**other, "title": "new"}


async def test_capture_full_rows_covers_deletes_and_partial_inserts_and_reads_only_if_needed(
    session: CassandraSession, keyspace: str
) -> None:
    # Issue 14: an update carried only the changed columns and a delete only the key, so
    # watchers and subscribers could not route or filter on the row.
    with trio.fail_after(GUARD):
        capture = LogCapture(keyspace)
        await capture.create(session)
        db = Database(session, keyspace, capture=capture)
        posts = posts_table(capture_full_rows=True)
        await db.create_table(posts)
        key = {"author": "ann", "id": uuid.uuid1()}
        full = {**key, "title": "hi", "score": 1, "tags": {"a"}, "order": 3}
        requests = session.stats.requests
        change = await db.insert(posts, full)
        assert change is not None and change.data == full
        assert session.stats.requests == requests + 1  # every column written: no read
        change = await db.update(posts, key, {"title": "t2", "score": 2, "tags": None, "order": 4})
        assert change is not None and change.data == {
            **key,
            "title": "t2",
            "score": 2,
            "tags": None,
            "order": 4,
        }
        assert session.stats.requests == requests + 2  # every column set: no read either
        change = await db.insert(posts, {**key, "score": 5})  # an upsert of one column
        assert change is not None
        assert change.data == {**key, "title": "t2", "score": 5, "tags": None, "order": 4}
        change = await db.delete(posts, key)
        assert change is not None and change.operation == "delete" and change.key == key
        assert change.data == {**key, "title": "t2", "score": 5, "tags": None, "order": 4}
        assert await db.get(posts, key) is None
        # Deleting a row that is not there: the key is all there is.
        change = await db.delete(posts, key)
        assert change is not None and change.data == key
        # Without the option, and without a capture, no read at all.
        plain = posts_table()
        requests = session.stats.requests
        change = await db.delete(plain, key)
        assert change is not None and change.data == key
        assert session.stats.requests == requests + 1
        uncaptured = Database(session, keyspace)
        requests = session.stats.requests
        assert await uncaptured.update(posts, key, {"score": 1}) is None
        assert session.stats.requests == requests + 1


# -- the capability example ---------------------------------------------------------------------


async def test_capability_chat_history(session: CassandraSession, keyspace: str) -> None:
    from trio_rt_examples.capabilities.chat_history import ChatMessage

    with trio.fail_after(GUARD):
        db = Database(session, keyspace)
        await ChatMessage.ensure_table(db)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        sent = []
        # three days ago, yesterday (twice), today (twice); and another room
        for age, n in [(3, 0), (1, 1), (1, 0), (0, 1), (0, 0)]:
            at = now - dt.timedelta(days=age, minutes=n)
            row = await ChatMessage.create(
                db, room="lobby", user_id="ann", text=f"d{age}m{n}", at=at
            )
            sent.append(row)
        await ChatMessage.create(db, room="other", user_id="bob", text="elsewhere")
        assert sent[-1]["day"] == now.date() and sent[-1]["sent_at"] == now

        latest = await ChatMessage.latest(db, "lobby", 3, today=now.date())
        assert [r["text"] for r in latest] == ["d0m0", "d0m1", "d1m0"]
        latest = await ChatMessage.latest(db, "lobby", 10, today=now.date())
        assert [r["text"] for r in latest] == ["d0m0", "d0m1", "d1m0", "d1m1", "d3m0"]
        assert latest == list(reversed(sent))  # the rows create() returned, as stored
        assert [
            r["text"]
            for r in await ChatMessage.latest(db, "lobby", 10, max_days=2, today=now.date())
        ] == [
            "d0m0",
            "d0m1",
            "d1m0",
            "d1m1",
        ]
        wire = ChatMessage.table.to_json(latest[0])
        assert wire["room"] == "lobby" and wire["sent_at"].endswith("Z")
        json.dumps(wire)
        with pytest.raises(TypeError, match=r"chat_messages\.text \(text\)"):
            await ChatMessage.create(db, room="lobby", user_id="ann", text=5)  # type: ignore[arg-type]

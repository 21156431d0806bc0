"""Schema creation in one call (`trio_rt.cassandra.create_schema`) and one command
(``trio-rt schema create``), on the real Cassandra: idempotent, clear errors, nothing sent
for a bad name."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
import trio

from trio_rt.cassandra import SCHEMA_PARTS, CassandraSession, Table, create_schema
from trio_rt.testing.services import CassandraEndpoint

from ..conftest import free_port

ALL_TABLES = [
    "trio_rt_stream_entries",
    "trio_rt_stream_heads",
    "trio_rt_watch_positions",
    "trio_rt_rooms",
    "trio_rt_permissions",
]
APP_TABLES = [Table("notes", {"id": "int", "text": "text"}, partition_key="id")]


async def tables_in(session: CassandraSession, keyspace: str) -> set[str]:
    rows = await session.execute(
        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?", (keyspace,)
    )
    return {row["table_name"] for row in rows}


async def test_create_schema_makes_every_table_once_and_again_changes_nothing(
    session: CassandraSession, keyspace: str
) -> None:
    assert list(SCHEMA_PARTS) == ["streams", "watchers", "rooms", "permissions"]
    made = await create_schema(session, keyspace, tables=[Table("t", {"k": "int"}, "k")])
    assert made == [*ALL_TABLES, "t"]
    assert await tables_in(session, keyspace) == {*ALL_TABLES, "t"}
    assert await create_schema(session, keyspace) == ALL_TABLES  # idempotent
    # What a server then uses works on them: a change stream's watcher position, a room.
    from trio_rt.cassandra import CassandraRoomStore

    await CassandraRoomStore(session, keyspace).load()


async def test_create_schema_parts_and_a_new_keyspace(session: CassandraSession) -> None:
    name = "trt_" + uuid.uuid4().hex[:12]
    try:
        made = await create_schema(
            session, name, parts=["streams", "watchers"], replication_factor=1
        )
        assert made == ALL_TABLES[:3]
        assert await tables_in(session, name) == set(ALL_TABLES[:3])
    finally:
        await session.drop_keyspace(name)


async def test_create_schema_errors_are_clear_and_send_nothing_for_bad_input(
    session: CassandraSession,
) -> None:
    before = session.stats.requests
    for bad in ("Bad-Name", "1abc", "x" * 49, "ks; DROP KEYSPACE system"):
        with pytest.raises(ValueError, match="keyspace"):
            await create_schema(session, bad)
    with pytest.raises(ValueError, match="unknown schema part"):
        await create_schema(session, "fine", parts=["streams", "history"])
    with pytest.raises(ValueError, match="replication_factor"):
        await create_schema(session, "fine", replication_factor=0)
    assert session.stats.requests == before
    with pytest.raises(LookupError, match="does not exist"):
        await create_schema(session, "trt_missing_" + uuid.uuid4().hex[:8])


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_rt", "schema", "create", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_the_schema_command(
    session: CassandraSession, keyspace: str, cassandra_endpoint: CassandraEndpoint
) -> None:
    where = f"{cassandra_endpoint.host}:{cassandra_endpoint.port}"
    done = await trio.to_thread.run_sync(
        run_cli,
        "--cassandra",
        where,
        "--keyspace",
        keyspace,
        "--tables",
        "tests.cassandra.test_schema:APP_TABLES",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [f"{keyspace}.{t}" for t in [*ALL_TABLES, "notes"]]
    assert await tables_in(session, keyspace) == {*ALL_TABLES, "notes"}
    again = await trio.to_thread.run_sync(
        run_cli, "--cassandra", where, "--keyspace", keyspace, "--only", "rooms"
    )
    assert again.returncode == 0 and again.stdout.split() == [f"{keyspace}.trio_rt_rooms"]
    # Clear errors: a bad name, a missing keyspace, a part that does not exist, no Cassandra.
    bad = await trio.to_thread.run_sync(run_cli, "--cassandra", where, "--keyspace", "Bad-Name")
    assert bad.returncode == 2 and "invalid keyspace name 'Bad-Name'" in bad.stderr
    missing = await trio.to_thread.run_sync(
        run_cli, "--cassandra", where, "--keyspace", "trt_missing_" + uuid.uuid4().hex[:8]
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert "--replication-factor" in missing.stderr
    part = await trio.to_thread.run_sync(
        run_cli, "--cassandra", where, "--keyspace", keyspace, "--only", "streams,nope"
    )
    assert part.returncode == 2 and "unknown schema part(s) 'nope'" in part.stderr
    nobody = f"127.0.0.1:{free_port()}"
    down = await trio.to_thread.run_sync(
        run_cli, "--cassandra", nobody, "--keyspace", keyspace, "--connect-timeout", "5"
    )
    assert down.returncode == 1 and f"Cassandra at {nobody}" in down.stderr
    assert "Traceback" not in down.stderr
    syntax = await trio.to_thread.run_sync(run_cli, "--cassandra", "nohost", "--keyspace", "k")
    assert syntax.returncode == 2 and "HOST:PORT" in syntax.stderr


async def test_the_deploy_sample(
    session: CassandraSession, keyspace: str, cassandra_endpoint: CassandraEndpoint
) -> None:
    from trio_rt_examples.docs import change_samples

    made = await change_samples.deploy(cassandra_endpoint.host, cassandra_endpoint.port, keyspace)
    assert made == [*ALL_TABLES, "posts"]
    assert await tables_in(session, keyspace) == {*ALL_TABLES, "posts"}

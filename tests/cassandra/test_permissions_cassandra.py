"""CassandraPermissionStore on the real Cassandra node (`cassandra_endpoint`), and used by a
server for a private room."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

import trio_rt.cassandra
from trio_rt import CassandraPermissionStore, Connection, PermissionStore, WebSocketManager
from trio_rt.cassandra import CassandraSession

from ..conftest import client


@pytest.fixture
async def store(session: CassandraSession) -> AsyncIterator[CassandraPermissionStore]:
    keyspace = "perm_" + uuid.uuid4().hex[:12]
    await session.create_keyspace(keyspace)
    s = CassandraPermissionStore(session, keyspace, cache_ttl=0)
    await s.create_table()
    yield s
    await session.drop_keyspace(keyspace)


def test_one_class_under_both_names() -> None:
    # It lives in trio_rt.cassandra; trio_rt.CassandraPermissionStore is the same class.
    assert CassandraPermissionStore is trio_rt.cassandra.CassandraPermissionStore
    assert CassandraPermissionStore.__module__ == "trio_rt.cassandra._permissions"


async def test_grants_wildcards_revokes(store: CassandraPermissionStore) -> None:
    assert isinstance(store, PermissionStore)
    await store.grant("ann", "room:a", "join", "broadcast")
    await store.grant("bob", "room:*", "read")
    await store.grant("*", "table:public", "read")
    await store.grant("root", "*", "*")
    assert await store.has_permission("ann", "room:a", "join")
    assert not await store.has_permission("ann", "room:b", "join")
    assert not await store.has_permission("ann", "room:a", "moderate")
    assert await store.has_permission("bob", "room:x", "read")
    assert not await store.has_permission("bob", "table:x", "read")
    assert await store.has_permission(None, "table:public", "read")
    assert not await store.has_permission(None, "room:a", "join")
    assert await store.has_permission("root", "table:x", "moderate")
    await store.revoke("ann", "room:a", "join")
    assert not await store.has_permission("ann", "room:a", "join")
    assert await store.has_permission("ann", "room:a", "broadcast")
    await store.revoke("ann", "room:a")
    assert not await store.has_permission("ann", "room:a", "broadcast")


async def test_values_are_bound_not_spliced(store: CassandraPermissionStore) -> None:
    hostile = "x' OR user_id = 'root"
    await store.grant(hostile, "room:'; DROP TABLE t; --", "join")
    assert await store.has_permission(hostile, "room:'; DROP TABLE t; --", "join")
    assert not await store.has_permission(hostile, "room:other", "join")
    assert not await store.has_permission("root", "room:'; DROP TABLE t; --", "join")
    rows = await store.session.execute(f"SELECT user_id, resource FROM {store.table}")
    assert rows == [{"user_id": hostile, "resource": "room:'; DROP TABLE t; --"}]


async def test_cache_serves_repeats_until_ttl(session: CassandraSession) -> None:
    keyspace = "perm_" + uuid.uuid4().hex[:12]
    await session.create_keyspace(keyspace)
    try:
        now = [0.0]
        store = CassandraPermissionStore(session, keyspace, cache_ttl=5, clock=lambda: now[0])
        other = CassandraPermissionStore(session, keyspace, cache_ttl=0)  # another server
        await store.create_table()
        await store.grant("ann", "room:a", "join")
        assert await store.has_permission("ann", "room:a", "join")
        await other.revoke("ann", "room:a")
        assert await store.has_permission("ann", "room:a", "join")  # cached
        now[0] = 6.0
        assert not await store.has_permission("ann", "room:a", "join")
    finally:
        await session.drop_keyspace(keyspace)


def test_names_are_checked() -> None:
    for bad in ("", "1x", "a-b", "x" * 49, "ks; DROP"):
        with pytest.raises(ValueError):
            CassandraPermissionStore(None, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CassandraPermissionStore(None, "ks", table="t t")  # type: ignore[arg-type]


async def test_private_room_with_the_cassandra_store(store: CassandraPermissionStore) -> None:
    await store.grant("ann", "room:vip", "join")
    manager = WebSocketManager(host="127.0.0.1", port=0, heartbeat_interval=None, permissions=store)

    @manager.on_connection
    async def identify(conn: Connection) -> None:
        conn.user_id = conn.request.query["user"][0]

    async with manager:
        await manager.create_room("vip", private=True)
        async with client(manager, "/?user=ann") as ann, client(manager, "/?user=eve") as eve:
            reply: dict[str, Any] = await ann.request({"type": "join_room", "room": "vip"})
            assert reply["type"] == "room_joined"
            reply = await eve.request({"type": "join_room", "room": "vip"})
            assert reply["code"] == "not_permitted"
            assert {c.user_id for c in manager.members_of("vip")} == {"ann"}

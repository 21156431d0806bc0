"""The PresenceManager contract (trio_rt/_engine/presence.py), run against every store: the
memory one,
Redis, and a Redis Cluster (the room's keys share one slot). Each test gets fresh rooms (and
a fresh key prefix on Redis). Expiry is observed by polling with a deadlock guard, never by
asserting a duration.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import trio

from trio_rt import MemoryPresence, PresenceManager
from trio_rt._core.presence_rules import PresenceUpdate

TTL = 30.0
GUARD = 10.0


@pytest.fixture(params=["memory", "redis", "redis_cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[PresenceManager]:
    if request.param == "memory":
        yield MemoryPresence()
        return
    from trio_rt.redis import RedisPresence

    prefix = f"t-presence-{uuid.uuid4().hex[:10]}"
    if request.param == "redis":
        s = RedisPresence(request.getfixturevalue("redis_url"), prefix=prefix)
    else:
        nodes = request.getfixturevalue("redis_cluster_nodes")
        s = RedisPresence(f"redis://{nodes[0]}/0", prefix=prefix, cluster=True)
    try:
        yield s
    finally:
        await s.aclose()


def room() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


def up(
    user: str | None, n: int, info: dict[str, object] | None = None, *, conn: str = "c1"
) -> PresenceUpdate:
    key = f"u:{user}" if user is not None else f"a:{conn}"
    return PresenceUpdate(key, user, n, info)


async def test_an_empty_room_has_no_one(store: PresenceManager) -> None:
    r = room()
    result = await store.members(r, 100)
    assert result.members == []
    assert (result.stats.users, result.stats.connections) == (0, 0)
    assert (await store.stats(r)).stats.users == 0


async def test_a_user_with_tabs_on_two_servers_is_one_member(store: PresenceManager) -> None:
    r = room()
    first = await store.sync(r, "s1", [up("alice", 2, {"name": "Alice"})], TTL)
    assert [(t.joined, t.user_id, t.info) for t in first.transitions] == [
        (True, "alice", {"name": "Alice"})
    ]
    second = await store.sync(r, "s2", [up("alice", 1, {"name": "Alice"})], TTL)
    assert second.transitions == []  # already present through s1
    assert (second.stats.users, second.stats.connections) == (1, 3)
    result = await store.members(r, 100)
    assert [m.to_json() for m in result.members or []] == [
        {"user_id": "alice", "connections": 3, "info": {"name": "Alice"}}
    ]
    # Leaving one server is no leave; leaving the last is.
    assert (await store.sync(r, "s1", [up("alice", 0)], TTL)).transitions == []
    last = await store.sync(r, "s2", [up("alice", 0)], TTL)
    assert [(t.joined, t.user_id) for t in last.transitions] == [(False, "alice")]
    assert last.stats.users == 0 and last.stats.connections == 0


async def test_counts_change_without_transitions_and_versions_grow(store: PresenceManager) -> None:
    r = room()
    joined = await store.sync(r, "s1", [up("a", 1), up("b", 1)], TTL)
    assert [t.version for t in joined.transitions] == [1, 2]
    again = await store.sync(r, "s1", [up("a", 3), up("b", 1)], TTL)  # a heartbeat, a+2 tabs
    assert again.transitions == []
    assert (again.stats.users, again.stats.connections, again.stats.version) == (2, 4, 2)
    gone = await store.sync(r, "s1", [up("a", 0), up("b", 0)], TTL)
    assert [t.version for t in gone.transitions] == [3, 4]
    # The room emptied; its version goes on (clients order events by it).
    back = await store.sync(r, "s1", [up("a", 1)], TTL)
    assert [t.version for t in back.transitions] == [5]


async def test_anonymous_connections_are_members_of_their_own(store: PresenceManager) -> None:
    r = room()
    await store.sync(r, "s1", [up(None, 1, conn="x"), up(None, 1, conn="y"), up("u", 1)], TTL)
    result = await store.members(r, 100)
    assert [(m.user_id, m.connections) for m in result.members or []] == [
        ("u", 1),
        (None, 1),
        (None, 1),
    ]


async def test_removing_what_is_not_there_changes_nothing(store: PresenceManager) -> None:
    r = room()
    result = await store.sync(r, "s1", [up("ghost", 0)], TTL)
    assert result.transitions == [] and result.stats.users == 0


async def test_above_the_limit_only_counts(store: PresenceManager) -> None:
    r = room()
    await store.sync(r, "s1", [up(f"u{i}", 1) for i in range(3)], TTL)
    big = await store.members(r, 2)
    assert big.members is None
    assert (big.stats.users, big.stats.connections) == (3, 3)
    fits = await store.members(r, 3)
    assert [m.user_id for m in fits.members or []] == ["u0", "u1", "u2"]


async def test_info_keeps_its_values(store: PresenceManager) -> None:
    r = room()
    info = {"name": "Zoë 🎈", "tags": ["a", 1, None, True], "n": 1.5}
    await store.sync(r, "s1", [up("z", 1, info)], TTL)
    result = await store.members(r, 10)
    assert result.members is not None and result.members[0].info == info


async def test_entries_of_a_server_that_stopped_refreshing_expire(
    store: PresenceManager,
) -> None:
    r = room()
    await store.sync(r, "dead", [up("only-dead", 1), up("both", 2)], 0.2)
    await store.sync(r, "live", [up("both", 1)], TTL)
    seen: list[tuple[bool, str | None]] = []
    with trio.fail_after(GUARD):
        while True:
            result = await store.stats(r)
            seen += [(t.joined, t.user_id) for t in result.transitions]
            if result.stats.users == 1:
                break
            await trio.sleep(0.05)
    assert seen == [(False, "only-dead")]  # `both` is still on the live server: no leave
    assert result.stats.connections == 1
    members = await store.members(r, 10)
    assert [(m.user_id, m.connections) for m in members.members or []] == [("both", 1)]


async def test_a_refreshed_entry_outlives_its_first_deadline(store: PresenceManager) -> None:
    r = room()
    await store.sync(r, "s1", [up("kept", 1), up("dropped", 1)], 0.3)
    # Refresh one of them until the other is gone: the refreshed one never expired meanwhile.
    with trio.fail_after(GUARD):
        while True:
            refreshed = await store.sync(r, "s1", [up("kept", 1)], 0.3)
            assert not [t for t in refreshed.transitions if t.user_id == "kept"]
            if refreshed.stats.users == 1:
                break
            await trio.sleep(0.05)
    members = await store.members(r, 10)
    assert [m.user_id for m in members.members or []] == ["kept"]


async def test_a_server_id_with_the_separator_is_refused(store: PresenceManager) -> None:
    with pytest.raises(ValueError, match="server_id"):
        await store.sync(room(), "bad\x1fid", [up("a", 1)], TTL)

"""PresenceService on real servers in one process (two managers sharing a MemoryHub and a
MemoryPresence): the ``presence`` / ``presence_stats`` commands, who may ask, the large-room
rule, the info hook, join/leave events, bad input. The multi-process Redis tests are in
tests/integration/test_presence_scale_out.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from trio_rt import (
    Connection,
    MemoryBroker,
    MemoryHub,
    MemoryPermissionStore,
    MemoryPresence,
    PresenceService,
    WebSocketManager,
)

from ..conftest import Client, client, wait_until

GUARD = 10.0


def tag_user(manager: WebSocketManager) -> None:
    """Connections say who they are with ``?user=<id>`` (no auth in these tests)."""

    @manager.on_connection
    async def who(conn: Connection) -> None:
        users = conn.request.query.get("user")
        conn.user_id = users[0] if users else None


@asynccontextmanager
async def servers(
    count: int = 2, permissions: MemoryPermissionStore | None = None, **presence: Any
) -> AsyncIterator[tuple[list[WebSocketManager], list[PresenceService]]]:
    hub, store = MemoryHub(), MemoryPresence()
    managers = [
        WebSocketManager(
            host="127.0.0.1",
            port=0,
            heartbeat_interval=None,
            broker=MemoryBroker(hub),
            permissions=permissions,
        )
        for _ in range(count)
    ]
    services = []
    for m in managers:
        tag_user(m)
        services.append(PresenceService(m, store, **presence))
    async with managers[0]:
        if count == 1:
            yield managers, services
        else:
            async with managers[1]:
                yield managers, services


async def join(c: Client, room: str) -> None:
    assert (await c.request({"type": "join_room", "room": room, "id": "j"}))[
        "type"
    ] == "room_joined"


async def ask(c: Client, mtype: str, room: str, rid: str = "q") -> dict[str, Any]:
    """Send a query and return its reply (skipping events that arrive meanwhile)."""
    await c.send({"type": mtype, "room": room, "id": rid})
    with trio.fail_after(GUARD):
        while True:
            msg = await c.recv()
            if msg.get("id") == rid:
                return msg


async def members_of(c: Client, room: str) -> list[tuple[str | None, int]]:
    answer = await ask(c, "presence", room)
    assert answer["type"] == "presence", answer
    return [(m["user_id"], m["connections"]) for m in answer["members"]]


async def poll(c: Client, room: str, want: Callable[[list[tuple[str | None, int]]], bool]) -> None:
    with trio.fail_after(GUARD):
        while not want(await members_of(c, room)):  # noqa: ASYNC110 - another server's state
            await trio.sleep(0.02)


async def test_a_user_with_tabs_on_two_servers_is_one_member_everywhere() -> None:
    async with servers() as (ms, _):
        async with (
            client(ms[0], "/?user=ann") as a1,
            client(ms[0], "/?user=ann") as a2,
            client(ms[1], "/?user=ann") as a3,
            client(ms[1], "/?user=bob") as b,
        ):
            for c in (a1, a2, a3, b):
                await join(c, "lobby")
            # A connection sees its own server's changes at once; the other's are written
            # by its own task: poll.
            await poll(a1, "lobby", lambda m: m == [("ann", 3), ("bob", 1)])
            await poll(b, "lobby", lambda m: m == [("ann", 3), ("bob", 1)])
            stats = await ask(b, "presence_stats", "lobby")
            assert (stats["type"], stats["users"], stats["connections"]) == ("presence_stats", 2, 4)
        async with client(ms[1], "/?user=bob") as b:
            await join(b, "lobby")
            await poll(b, "lobby", lambda m: m == [("bob", 1)])


async def test_a_connection_sees_its_own_join_at_once() -> None:
    async with servers(1) as (ms, _), client(ms[0], "/?user=me") as c:
        await join(c, "r")
        assert await members_of(c, "r") == [("me", 1)]


async def test_only_members_may_ask_unless_granted() -> None:
    permissions = MemoryPermissionStore()
    async with (
        servers(1) as (ms, _),
        client(ms[0], "/?user=out") as outsider,
        client(ms[0], "/?user=in") as c,
    ):
        await join(c, "r")
        for mtype in ("presence", "presence_stats"):
            refused = await ask(outsider, mtype, "r")
            assert (refused["type"], refused["code"]) == ("error", "not_in_room")
    # With a permission store, a `presence` grant on the room is enough.
    async with servers(1, permissions) as (ms, _):
        permissions.grant("watcher", "room:r", "presence")
        permissions.grant("in", "room:r", "join")
        async with client(ms[0], "/?user=watcher") as w, client(ms[0], "/?user=in") as c:
            await join(c, "r")
            assert await members_of(w, "r") == [("in", 1)]


async def test_a_large_room_answers_counts_only() -> None:
    async with (
        servers(1, max_members=2) as (ms, _),
        client(ms[0], "/?user=a") as a,
        client(ms[0], "/?user=b") as b,
        client(ms[0], "/?user=c") as c,
    ):
        for x in (a, b, c):
            await join(x, "big")
        refused = await ask(a, "presence", "big")
        assert refused["type"] == "error" and refused["code"] == "too_large"
        assert (refused["users"], refused["connections"], refused["room"]) == (3, 3, "big")
        assert "presence_stats" in refused["message"]
        stats = await ask(a, "presence_stats", "big")
        assert stats["users"] == 3


@pytest.mark.parametrize(
    "frame, code",
    [
        ({"type": "presence"}, "invalid_field"),
        ({"type": "presence", "room": 5}, "invalid_field"),
        ({"type": "presence_stats", "room": "a b"}, "invalid_field"),
        ({"type": "presence", "room": "x" * 200}, "too_large"),
    ],
)
async def test_bad_queries_get_clear_errors(frame: dict[str, Any], code: str) -> None:
    async with servers(1) as (ms, _), client(ms[0]) as c:
        answer = await c.request({**frame, "id": 9})
        assert (answer["type"], answer["code"], answer["id"]) == ("error", code, 9)


async def test_without_presence_the_commands_are_refused(
    make_manager: Callable[..., WebSocketManager],
) -> None:
    async with make_manager() as m, client(m) as c:
        answer = await c.request({"type": "presence", "room": "r", "id": 1})
        assert (answer["code"], answer["message"]) == (
            "unknown_type",
            "presence is not enabled on this server",
        )
        assert m.presence is None


async def test_the_info_hook_is_public_info_checked_and_bounded() -> None:
    def info(conn: Connection) -> dict[str, Any] | None:
        if conn.user_id == "big":
            return {"bio": "x" * 1000}  # over max_info_bytes: logged, None
        if conn.user_id == "bad":
            raise RuntimeError("hook bug")  # logged, None
        return {"name": (conn.user_id or "").title()}

    async with (
        servers(1, info=info) as (ms, _),
        client(ms[0], "/?user=ann") as a,
        client(ms[0], "/?user=big") as big,
        client(ms[0], "/?user=bad") as bad,
    ):
        for c in (a, big, bad):
            await join(c, "r")
        answer = await ask(a, "presence", "r")
        assert answer["members"] == [
            {"user_id": "ann", "connections": 1, "info": {"name": "Ann"}},
            {"user_id": "bad", "connections": 1, "info": None},
            {"user_id": "big", "connections": 1, "info": None},
        ]


async def test_join_and_leave_events_reach_members_on_every_server() -> None:
    async with (
        servers(events=lambda room: room.startswith("ev-")) as (ms, _),
        client(ms[0], "/?user=watcher") as w,
        client(ms[0], "/?user=q") as quiet,
    ):
        await join(w, "ev-room")
        await join(quiet, "plain")
        first = await w.recv()  # its own join
        assert first["type"] == "presence_diff"
        assert [j["user_id"] for j in first["joins"]] == ["watcher"]
        async with client(ms[1], "/?user=bob") as b:
            await join(b, "ev-room")
            diff = await w.recv()
            assert diff["type"] == "presence_diff" and diff["room"] == "ev-room"
            assert [(j["user_id"], j["info"]) for j in diff["joins"]] == [("bob", None)]
            assert diff["version"] > first["version"]
        diff = await w.recv()
        assert diff["leaves"] == [{"user_id": "bob", "version": diff["version"]}]
        # A room without events: nothing was sent to its member.
        answer = await ask(quiet, "presence", "plain")
        assert answer["members"] == [{"user_id": "q", "connections": 1, "info": None}]


async def test_churn_within_the_window_is_coalesced() -> None:
    async with (
        servers(1, events=True, event_interval=0.5) as (ms, (svc,)),
        client(ms[0], "/?user=w") as w,
    ):
        await join(w, "r")
        assert [j["user_id"] for j in (await w.recv())["joins"]] == ["w"]
        published = svc.events_published
        for _ in range(5):  # come and go, many times, within one window
            async with client(ms[0], "/?user=flicker") as f:
                await join(f, "r")
                await members_of(w, "r")  # written (and its transition batched) now
        async with client(ms[0], "/?user=stays") as s:
            await join(s, "r")
            diff = await w.recv()
            assert [j["user_id"] for j in diff["joins"]] == ["stays"]
            assert diff["leaves"] == []
            assert svc.events_published == published + 1


async def test_a_service_stopped_gracefully_removes_its_entries() -> None:
    hub, store = MemoryHub(), MemoryPresence()
    m1 = WebSocketManager(
        host="127.0.0.1", port=0, heartbeat_interval=None, broker=MemoryBroker(hub)
    )
    tag_user(m1)
    PresenceService(m1, store)
    async with m1, client(m1, "/?user=gone") as c:
        await join(c, "r")
        assert await members_of(c, "r") == [("gone", 1)]
    result = await store.stats("r")
    assert (result.stats.users, result.stats.connections) == (0, 0)


async def test_heartbeats_keep_entries_alive_past_their_ttl() -> None:
    async with (
        servers(1, ttl=1.0, heartbeat_interval=0.05) as (ms, (svc,)),
        client(ms[0], "/?user=alive") as c,
    ):
        await join(c, "r")
        # Forty heartbeats (two ttls' worth) go by; the entry is there each time it is read.
        start = svc.heartbeats
        with trio.fail_after(GUARD):
            while svc.heartbeats < start + 40:
                assert await members_of(c, "r") == [("alive", 1)]
                await trio.sleep(0.05)


def test_options_are_checked() -> None:
    m = WebSocketManager(heartbeat_interval=None)
    with pytest.raises(ValueError, match="ttl"):
        PresenceService(m, ttl=0)
    with pytest.raises(ValueError, match="shorter than ttl"):
        PresenceService(m, ttl=1, heartbeat_interval=2)
    with pytest.raises(ValueError, match="max_members"):
        PresenceService(m, max_members=0)
    with pytest.raises(TypeError, match="info"):
        PresenceService(m, info="name")  # type: ignore[arg-type]


async def test_a_second_service_on_one_manager_is_refused() -> None:
    m = WebSocketManager(heartbeat_interval=None)
    PresenceService(m)
    with pytest.raises(RuntimeError, match="already has a PresenceService"):
        PresenceService(m)


async def test_the_apps_own_joins_count_too() -> None:
    # The membership observer runs for the app's own joins too (manager.join_room).
    async with servers(1) as (ms, (svc,)), client(ms[0], "/?user=app") as c:
        conn = next(iter(ms[0].connections.values()))
        await ms[0].join_room(conn, "by-app")
        await wait_until(lambda: svc.tally.has("by-app", "u:app"))
        assert await members_of(c, "by-app") == [("app", 1)]

"""Presence across server processes on one real Redis (issue 18's bar).

Three ``python -m trio_rt serve tests.integration.presence_server:build_app`` processes share a
Redis
broker and a `RedisPresence` (a fresh key and channel prefix per test, a short ttl). Checked:

- after joins and a leave, every server answers the same ``presence`` (a user with tabs on
  two servers is one member with its connection count), polled until equal;
- after one server is killed with SIGKILL (no goodbye), its entries are gone from every other
  server's answer within the ttl (they expire: the heartbeats stopped), and members of a room
  with events get the leave;
- the Python client's ``presence`` / ``presence_stats`` / ``presence_diff`` events.

No assertion depends on timing: ``fail_after`` only guards against deadlocks.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import trio
from websockets.trio.client import ClientConnection, connect

from tests.integration.presence_server import PREFIX_ENV, REDIS_URL_ENV, TTL_ENV
from tests.integration.test_scale_out import GUARD, ServerProcess, serve_apps
from trio_rt.client import WebSocketClient

TTL = 1.0  # seconds: a dead server's entries expire after this
AGREE = 10.0  # guard for "every server agrees"


def presence_servers(
    redis_url: str, count: int
) -> contextlib.AbstractAsyncContextManager[list[ServerProcess]]:
    """Start `count` servers sharing `redis_url` under a fresh prefix; stop (or kill) them all
    on the way out."""
    env = {
        REDIS_URL_ENV: redis_url,
        PREFIX_ENV: f"t-presence-{uuid.uuid4().hex[:10]}",
        TTL_ENV: str(TTL),
    }
    return serve_apps("tests.integration.presence_server:build_app", [env] * count)


class Raw:
    """A raw WebSocket client (the protocol as written), welcome consumed."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._ids = 0

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self._ids += 1
        rid = self._ids
        await self.ws.send(json.dumps({**message, "id": rid}))
        with trio.fail_after(GUARD):
            while True:
                reply = json.loads(await self.ws.recv())
                if reply.get("id") == rid:
                    return dict(reply)
                self.events.append(reply)  # presence_diff events meanwhile

    async def members(self, room: str) -> list[tuple[str | None, int, Any]]:
        answer = await self.request({"type": "presence", "room": room})
        assert answer["type"] == "presence", answer
        return [(m["user_id"], m["connections"], m["info"]) for m in answer["members"]]


@contextlib.asynccontextmanager
async def raw(url: str, user: str, room: str) -> AsyncIterator[Raw]:
    async with connect(f"{url}?user={user}", ping_interval=None) as ws:
        c = Raw(ws)
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome"
        joined = await c.request({"type": "join_room", "room": room})
        assert joined["type"] == "room_joined", joined
        yield c


async def agree(observers: list[Raw], room: str, want: list[tuple[str | None, int, Any]]) -> None:
    """Poll every observer (one per server) until each answers `want`."""
    with trio.fail_after(AGREE):
        for observer in observers:
            while await observer.members(room) != want:  # noqa: ASYNC110 - polled servers
                await trio.sleep(0.02)


def who(user: str, n: int) -> tuple[str, int, dict[str, str]]:
    return (user, n, {"name": user.upper()})


async def test_every_server_agrees_after_joins_a_leave_and_a_kill_9(redis_url: str) -> None:
    room = "ev-lobby"
    async with presence_servers(redis_url, 3) as (s0, s1, s2), contextlib.AsyncExitStack() as stack:
        # One observer per server, all the same user (one member, three connections).
        observers = [await stack.enter_async_context(raw(s.url, "obs", room)) for s in (s0, s1, s2)]
        # ann: two tabs on s0, one on s1; bob on s2; carol only on s1 (the one to be killed).
        await stack.enter_async_context(raw(s0.url, "ann", room))
        await stack.enter_async_context(raw(s0.url, "ann", room))
        await stack.enter_async_context(raw(s1.url, "ann", room))
        await stack.enter_async_context(raw(s1.url, "carol", room))
        async with raw(s2.url, "bob", room):
            await agree(
                observers,
                room,
                [who("ann", 3), who("bob", 1), who("carol", 1), who("obs", 3)],
            )
        # bob left (his connection closed): every server agrees he is gone.
        await agree(observers, room, [who("ann", 3), who("carol", 1), who("obs", 3)])
        stats = await observers[2].request({"type": "presence_stats", "room": room})
        assert (stats["users"], stats["connections"]) == (3, 7)

        # kill -9 s1: no goodbye; its entries (ann's tab, carol, an observer) expire by ttl.
        s1.proc.kill()
        with trio.fail_after(GUARD):
            await s1.proc.wait()
        alive = [observers[0], observers[2]]
        await agree(alive, room, [who("ann", 2), who("obs", 2)])
        # Members of an event room on the surviving servers were told carol left.
        for observer in alive:
            with trio.fail_after(AGREE):
                while not any(
                    leave["user_id"] == "carol"
                    for e in observer.events
                    if e.get("type") == "presence_diff"
                    for leave in e.get("leaves", ())
                ):
                    observer.events.append(json.loads(await observer.ws.recv()))


async def test_the_python_client_asks_and_hears(redis_url: str) -> None:
    room = "ev-py"
    async with (
        presence_servers(redis_url, 2) as (s0, s1),
        WebSocketClient(f"{s0.url}?user=py") as py,
    ):
        await py.join_room(room)
        answer = await py.presence(room)
        assert answer["members"] == [{"user_id": "py", "connections": 1, "info": {"name": "PY"}}]
        async with raw(s1.url, "other", room):
            with trio.fail_after(AGREE):
                while True:
                    message = await py.receive()
                    if message["type"] == "presence_diff" and any(
                        j["user_id"] == "other" for j in message.get("joins", ())
                    ):
                        break
            stats = await py.presence_stats(room)
            assert (stats["users"], stats["connections"]) == (2, 2)

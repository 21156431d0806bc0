"""The Broker contract, run against every implementation; and several servers over one broker.

Implementations register a factory in BROKERS: a function returning a context manager that
yields a fresh `make()` building brokers connected to each other (same hub / same Redis).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from trio_rt import Broker, Connection, MemoryBroker, MemoryHub, WebSocketManager
from trio_rt._core.envelope import Envelope, decode_envelope

from ..conftest import client, count_tasks, wait_until

MakeBroker = Callable[[], Broker]


@asynccontextmanager
async def memory_brokers() -> AsyncIterator[MakeBroker]:
    hub = MemoryHub()
    yield lambda: MemoryBroker(hub)


@asynccontextmanager
async def redis_brokers(url: str) -> AsyncIterator[MakeBroker]:
    from trio_rt import RedisBroker

    yield lambda: RedisBroker(url)


@pytest.fixture(params=["memory", "redis"])
async def make_broker(request: pytest.FixtureRequest) -> AsyncIterator[MakeBroker]:
    if request.param == "memory":
        async with memory_brokers() as make:
            yield make
    else:
        async with redis_brokers(request.getfixturevalue("redis_url")) as make:
            yield make


class Inbox:
    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []

    def __call__(self, channel: str, data: bytes) -> None:
        self.items.append((channel, data))


@asynccontextmanager
async def started(broker: Broker, inbox: Inbox) -> AsyncIterator[Broker]:
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.run, inbox)
        yield broker
        nursery.cancel_scope.cancel()


async def test_publish_reaches_every_subscriber_once_including_self(
    make_broker: MakeBroker,
) -> None:
    a_in, b_in, c_in = Inbox(), Inbox(), Inbox()
    async with (
        started(make_broker(), a_in) as a,
        started(make_broker(), b_in) as b,
        started(make_broker(), c_in),
    ):
        await a.subscribe("ch")
        await a.subscribe("ch")  # twice is once
        await b.subscribe("ch")
        await a.publish("ch", b"hello")
        await wait_until(lambda: len(a_in.items) == 1 and len(b_in.items) == 1)
        await a.publish("other", b"nobody")
        await a.publish("ch", b"second")
        await wait_until(lambda: len(a_in.items) == 2 and len(b_in.items) == 2)
        assert a_in.items == b_in.items == [("ch", b"hello"), ("ch", b"second")]
        assert c_in.items == []
        assert a.channels == {"ch"}


async def test_order_per_channel_is_kept(make_broker: MakeBroker) -> None:
    inbox = Inbox()
    async with started(make_broker(), inbox) as sub, started(make_broker(), Inbox()) as pub:
        await sub.subscribe("seq")
        for i in range(500):
            await pub.publish("seq", str(i).encode())
        await wait_until(lambda: len(inbox.items) == 500)
        assert [int(d) for _, d in inbox.items] == list(range(500))


async def test_a_publish_that_returns_was_handed_on(make_broker: MakeBroker) -> None:
    """`publish` returns once the message is handed on for every subscribed server; this
    server's own subscribers have it already. Without a break in the subscriptions,
    `on_resubscribed` listeners are never called."""
    mine, theirs = Inbox(), Inbox()
    calls: list[str] = []
    async with started(make_broker(), mine) as a, started(make_broker(), theirs) as b:
        for broker, name in ((a, "a"), (b, "b")):
            broker.on_resubscribed(lambda name=name: calls.append(name))  # type: ignore[misc]
        await a.subscribe("ch")
        await b.subscribe("ch")
        for i in range(50):
            await a.publish("ch", b"%d" % i)
            assert mine.items[-1] == ("ch", b"%d" % i)  # at once, before any round trip
        await wait_until(lambda: len(theirs.items) == 50)
        assert theirs.items == mine.items
        assert calls == []


async def test_unsubscribe_stops_delivery(make_broker: MakeBroker) -> None:
    inbox = Inbox()
    async with started(make_broker(), inbox) as sub, started(make_broker(), Inbox()) as pub:
        await sub.subscribe("ch")
        await sub.subscribe("keep")
        sub.unsubscribe("ch")
        assert sub.channels == {"keep"}
        # contract: an unsubscribe has taken effect once a later subscribe returns
        await sub.subscribe("barrier")
        await pub.publish("ch", b"late")
        await pub.publish("keep", b"marker")
        await wait_until(lambda: ("keep", b"marker") in inbox.items)
        assert ("ch", b"late") not in inbox.items


async def test_run_ends_cleanly_and_leaves_no_task(make_broker: MakeBroker) -> None:
    before = count_tasks()
    inbox = Inbox()
    broker = make_broker()
    async with started(broker, inbox):
        await broker.subscribe("x")
    assert count_tasks() == before
    # a stopped broker delivers nothing more
    async with started(make_broker(), Inbox()) as other:
        await other.publish("x", b"after")
        await trio.sleep(0.1)
    assert inbox.items == []


async def test_publish_envelope_is_publish_of_its_encoding(make_broker: MakeBroker) -> None:
    """A subscriber with only `run`'s Deliver gets the envelope's bytes; one that accepts
    envelopes (an in-process broker may hand them over as they are) gets an equal envelope,
    in the same order as the bytes published on the channel."""
    plain_in, env_in = Inbox(), Inbox()
    envelopes: list[tuple[str, Envelope]] = []
    env_broker = make_broker()
    env_broker.accept_envelopes(lambda channel, env: envelopes.append((channel, env)))
    first = Envelope(b'{"n":1}', rooms=("r1", "r2"), exclude="c1")
    second = Envelope(b'{"n":2}', kind="server", origin="s1")
    async with started(make_broker(), plain_in) as plain, started(env_broker, env_in) as e:
        await plain.subscribe("ch")
        await e.subscribe("ch")
        await plain.publish_envelope("ch", first)
        await plain.publish_envelope("ch", second)
        await wait_until(lambda: len(plain_in.items) == 2)
        await wait_until(lambda: len(env_in.items) + len(envelopes) == 2)
    assert [decode_envelope(data) for _, data in plain_in.items] == [first, second]
    got = [decode_envelope(data) for _, data in env_in.items] + [env for _, env in envelopes]
    assert got == [first, second]
    if isinstance(env_broker, MemoryBroker):
        assert envelopes == [("ch", first), ("ch", second)] and env_in.items == []


async def test_a_memory_broker_that_overrides_publish_keeps_it_for_envelopes() -> None:
    """A subclass's `publish` (tests: a broker that refuses) sees every envelope published."""
    seen: list[bytes] = []

    class Watching(MemoryBroker):
        async def publish(self, channel: str, data: bytes) -> None:
            seen.append(data)
            await super().publish(channel, data)

    inbox = Inbox()
    broker = Watching()
    broker.accept_envelopes(lambda channel, env: pytest.fail("bypassed the override"))
    env = Envelope(b'{"n":1}', rooms=("r",))
    async with started(broker, inbox):
        await broker.subscribe("ch")
        await broker.publish_envelope("ch", env)
    assert [decode_envelope(data) for data in seen] == [env]
    assert [decode_envelope(data) for _, data in inbox.items] == [env]


async def test_two_servers_one_room_exactly_once(make_broker: MakeBroker) -> None:
    """Scale-out through the seam: clients on two managers, broadcasts from either."""
    prefix = f"t{id(make_broker)}"  # a namespace of its own on a shared Redis
    m1, m2 = (
        WebSocketManager(
            host="127.0.0.1",
            port=0,
            heartbeat_interval=None,
            broker=make_broker(),
            channel_prefix=prefix,
        )
        for _ in range(2)
    )
    for m in (m1, m2):

        @m.on_connection
        async def name(conn: Connection) -> None:
            conn.user_id = conn.request.query["u"][0]

    async with (
        m1,
        m2,
        client(m1, "/?u=a") as a,
        client(m2, "/?u=b") as b,
        client(m2, "/?u=c") as c,
        client(m1, "/?u=mod") as mod,
    ):
        for x, rooms in ((a, ["r1", "r2"]), (b, ["r2"]), (c, ["r3"])):
            for r in rooms:
                await x.request({"type": "join_room", "room": r})
        await m1.broadcast_to_rooms(["r1", "r2", "r3"], {"type": "m", "n": 1})
        await m2.broadcast_to_room("r2", {"type": "m", "n": 2})
        await m1.broadcast({"type": "m", "n": 3})
        # Exactly once each. Order holds per publisher only: n=2 (from m2) and n=3 (from m1)
        # may arrive either way round.
        assert sorted([(await a.recv())["n"] for _ in range(3)]) == [1, 2, 3]
        assert sorted([(await b.recv())["n"] for _ in range(3)]) == [1, 2, 3]
        assert sorted([(await c.recv())["n"] for _ in range(2)]) == [1, 3]
        assert (await mod.recv())["n"] == 3
        # nothing else was queued for anyone
        for x in (a, b, c, mod):
            assert await x.request({"type": "ping"}) == {"type": "pong"}
        # cross_server_message: to every other server's handlers, not to the sender's
        got: dict[str, list[tuple[dict[str, object], str]]] = {"m1": [], "m2": []}
        for name, m in (("m1", m1), ("m2", m2)):

            @m.on("cross_server_message")
            async def on_server_message(
                message: dict[str, object], origin: str, name: str = name
            ) -> None:
                got[name].append((message, origin))

        await m1.send_to_servers({"type": "reload", "what": "config"})
        await wait_until(lambda: len(got["m2"]) == 1)
        assert got["m2"] == [({"type": "reload", "what": "config"}, m1.server_id)]
        await m2.send_to_servers({"type": "ping"})
        await wait_until(lambda: len(got["m1"]) == 1)
        assert got["m1"] == [({"type": "ping"}, m2.server_id)] and len(got["m2"]) == 1
        # a kick from one server reaches members on the other
        await m1.create_room("r2", moderators=["mod"])
        await m2.create_room("r2", moderators=["mod"])
        await mod.request({"type": "kick", "room": "r2", "user_id": "b"})
        assert (await b.recv())["type"] == "room_kicked"
        assert m2.members_of("r2") == frozenset()
        assert [conn.user_id for conn in m1.members_of("r2")] == ["a"]

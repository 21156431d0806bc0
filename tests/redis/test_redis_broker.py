"""RedisBroker against real Redis: restarts, scale-out across managers, Redis Cluster sharding."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from trio_rt import BrokerUnavailable, Connection, RedisBroker, WebSocketManager

from ..conftest import client, free_port, redis_on, two_servers, wait_until


def make(url: str, **kwargs: Any) -> WebSocketManager:
    return WebSocketManager(
        host="127.0.0.1",
        port=0,
        heartbeat_interval=None,
        broker=RedisBroker(
            url, reconnect_initial=0.05, reconnect_max=0.2, **{"publish_timeout": 0.5, **kwargs}
        ),
    )


async def test_redis_restart_local_delivery_continues_then_cluster_delivery_resumes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with redis_on(port) as first:
        m1, m2 = make(url), make(url)
        b1 = m1.broker
        assert isinstance(b1, RedisBroker)
        async with (
            m1,
            m2,
            client(m1) as a,
            client(m2) as b,
        ):
            await a.request({"type": "join_room", "room": "r"})
            await b.request({"type": "join_room", "room": "r"})
            await m1.broadcast_to_room("r", {"type": "m", "n": 1})
            assert (await a.recv())["n"] == 1 and (await b.recv())["n"] == 1

            first.terminate()
            await trio.to_thread.run_sync(first.wait)
            await wait_until(lambda: not b1.connected)
            # Redis is down: this server's members are still served, and the sender is told
            # that the other servers were not reached.
            with pytest.raises(BrokerUnavailable):
                await m1.broadcast_to_room("r", {"type": "m", "n": 2})
            assert (await a.recv())["n"] == 2
            assert b1.stats.failed == 1

            with redis_on(port):
                await wait_until(lambda: b1.connected, limit=20)
                assert isinstance(m2.broker, RedisBroker)
                await wait_until(lambda: m2.broker.connected, limit=20)  # type: ignore[attr-defined]
                # Subscriptions are back: a broadcast crosses servers again. Retry until the
                # other side's resubscription is confirmed (we cannot observe it directly).
                n = 3
                with trio.fail_after(20):
                    while True:
                        await m1.broadcast_to_room("r", {"type": "m", "n": n})
                        assert (await a.recv())["n"] == n
                        with trio.move_on_after(0.5):
                            got = await b.recv()
                            assert got["n"] == n
                            break
                        n += 1
                assert b1.stats.reconnects >= 1
                assert "reconnected to redis" in caplog.text
                # and b keeps receiving exactly once, in order
                for k in range(100, 110):
                    await m2.broadcast_to_room("r", {"type": "m", "n": k})
                assert [(await b.recv())["n"] for _ in range(10)] == list(range(100, 110))
                assert [(await a.recv())["n"] for _ in range(10)] == list(range(100, 110))


async def test_unsubscribed_when_last_local_member_leaves(redis_url: str) -> None:
    manager = make(redis_url)
    async with manager:
        broker = manager.broker
        async with client(manager) as a:
            await a.request({"type": "join_room", "room": "lonely"})
            assert manager._channels.room("lonely") in broker.channels
            await a.request({"type": "leave_room", "room": "lonely"})
            assert manager._channels.room("lonely") not in broker.channels
        await wait_until(
            lambda: broker.channels == {manager._channels.all, manager._channels.servers}
        )
        await wait_until(lambda: broker.backlog == 0)  # nothing left queued either way


async def test_bad_broker_settings_are_refused() -> None:
    for kwargs in (
        {"url": "http://x"},
        {"publish_queue_size": 0},
        {"receive_buffer": True},
        {"reconnect_initial": 0},
    ):
        with pytest.raises(ValueError):
            RedisBroker(**kwargs)  # type: ignore[arg-type]


async def test_sharded_pubsub_on_a_redis_cluster(redis_cluster_nodes: list[str]) -> None:
    url = f"redis://{redis_cluster_nodes[0]}/0"
    m1, m2 = make(url, cluster=True), make(url, cluster=True)
    for m in (m1, m2):

        @m.on_connection
        async def name(conn: Connection) -> None:
            conn.user_id = conn.request.query.get("u", ["x"])[0]

    rooms = [f"room-{i}" for i in range(12)]  # spread over the three shards' hash slots
    async with two_servers(m1, m2) as (a, b):
        for r in rooms:
            await a.request({"type": "join_room", "room": r})
            await b.request({"type": "join_room", "room": r})
        for i, r in enumerate(rooms):
            await (m1 if i % 2 else m2).broadcast_to_room(r, {"type": "m", "room": r})
        got_a = sorted([(await a.recv())["room"] for _ in rooms])
        got_b = sorted([(await b.recv())["room"] for _ in rooms])
        assert got_a == got_b == sorted(rooms)
        await m1.broadcast_to_rooms(rooms, {"type": "once"})
        assert (await a.recv())["type"] == "once" and (await b.recv())["type"] == "once"
        for x in (a, b):
            assert await x.request({"type": "ping"}) == {"type": "pong"}


# -- publish is confirmed; breaks in the subscriptions are announced (issue 12) ----------------
class Inbox:
    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []

    def __call__(self, channel: str, data: bytes) -> None:
        self.items.append((channel, data))


@asynccontextmanager
async def running(*brokers_and_inboxes: tuple[RedisBroker, Inbox]) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        for broker, inbox in brokers_and_inboxes:
            await nursery.start(broker.run, inbox)
        yield
        nursery.cancel_scope.cancel()


def fast(url: str, **kwargs: Any) -> RedisBroker:
    return RedisBroker(url, reconnect_initial=0.05, reconnect_max=0.2, **kwargs)


async def until_crossing(pub: RedisBroker, inbox: Inbox, channel: str) -> None:
    """Publish markers until one reaches `inbox` (the other side's subscription is live)."""
    with trio.fail_after(20):
        n = 0
        while True:
            n += 1
            marker = b"marker-%d" % n
            with contextlib.suppress(BrokerUnavailable):
                await pub.publish(channel, marker)
            with trio.move_on_after(0.3):
                await wait_until(lambda m=marker: (channel, m) in inbox.items)  # type: ignore[misc]
                return


async def test_published_counts_what_redis_confirmed(redis_url: str) -> None:
    a, b = fast(redis_url), fast(redis_url)
    b_in = Inbox()
    async with running((a, Inbox()), (b, b_in)):
        await b.subscribe("count")
        for i in range(20):
            await a.publish("count", b"%d" % i)
        assert a.stats.published == 20 and a.stats.failed == 0
        await wait_until(lambda: len(b_in.items) == 20)


async def test_a_publish_while_redis_is_down_waits_for_it_and_then_arrives() -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    a, b = fast(url, publish_timeout=30), fast(url)
    b_in = Inbox()
    with redis_on(port) as first:
        async with running((a, Inbox()), (b, b_in)), trio.open_nursery() as nursery:
            await b.subscribe("ch")
            await until_crossing(a, b_in, "ch")
            first.kill()
            await trio.to_thread.run_sync(first.wait)
            await wait_until(lambda: not a.connected and not b.connected)
            published = trio.Event()

            async def publish() -> None:
                await a.publish("ch", b"during the outage")
                published.set()

            nursery.start_soon(publish)
            await trio.sleep(0.3)  # the publish is waiting for Redis, not dropped
            assert not published.is_set() and a.stats.failed == 0
            with redis_on(port):  # back, empty, same port
                await published.wait()
                # b resubscribed before a's PUBLISH (both wait for Redis; b's reader may be
                # later than a's writer): it may have missed it, but then it was told.
                await wait_until(lambda: b.stats.resubscribed >= 1)
                assert a.stats.published >= 2 and a.stats.failed == 0


async def test_a_publish_fails_loudly_when_redis_stays_down(redis_url: str) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    a = fast(url, publish_timeout=0.3)
    a_in = Inbox()
    with redis_on(port) as only:
        async with running((a, a_in)):
            await a.subscribe("ch")
            only.kill()
            await trio.to_thread.run_sync(only.wait)
            await wait_until(lambda: not a.connected)
            with pytest.raises(BrokerUnavailable, match="did not confirm"):
                await a.publish("ch", b"refused")
            assert a_in.items == [("ch", b"refused")]  # this server's own subscribers: at once
            assert a.stats.failed == 1 and a.stats.published == 0
            with pytest.warns(DeprecationWarning):
                assert a.stats.dropped_while_down == 1


async def test_the_first_publish_after_a_restart_reaches_the_other_servers() -> None:
    """Redis restarted empty on the same port: the publishes right after it are neither
    dropped nor sent to a dead pooled connection; each either arrives or raises."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    a, b = fast(url), fast(url)
    b_in = Inbox()
    resubscribed = trio.Event()
    b.on_resubscribed(resubscribed.set)
    with redis_on(port) as first:
        async with running((a, Inbox()), (b, b_in)):
            await b.subscribe("ch")
            await until_crossing(a, b_in, "ch")
            first.kill()
            await trio.to_thread.run_sync(first.wait)
            with redis_on(port):
                await resubscribed.wait()  # b's subscription is live again
                for i in range(5):
                    await a.publish("ch", b"after %d" % i)
                await wait_until(lambda: sum(d.startswith(b"after") for _, d in b_in.items) == 5)
                assert [d for _, d in b_in.items if d.startswith(b"after")] == [
                    b"after %d" % i for i in range(5)
                ]


async def test_on_resubscribed_fires_once_subscriptions_are_back_in_effect() -> None:
    """After a break (Redis restarted empty), the listeners are called once the broker's
    subscriptions work again: what is published after the call is delivered."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    a, b = fast(url), fast(url)
    b_in = Inbox()
    calls: list[int] = []

    def listener() -> None:
        calls.append(len(b_in.items))

    b.on_resubscribed(listener)
    with redis_on(port) as first:
        async with running((a, Inbox()), (b, b_in)):
            await b.subscribe("ch")
            await b.subscribe("other")
            await until_crossing(a, b_in, "ch")
            assert calls == []  # no break, no call
            first.kill()
            await trio.to_thread.run_sync(first.wait)
            with redis_on(port):
                await wait_until(lambda: len(calls) == 1, limit=20)
                await a.publish("ch", b"right after")
                await a.publish("other", b"and here")
                await wait_until(lambda: len(b_in.items) >= calls[0] + 2)
                assert b_in.items[-2:] == [("ch", b"right after"), ("other", b"and here")]
                assert b.stats.resubscribed == 1 and b.stats.reconnects >= 1


# -- the hot path runs on Trio's own scheduling (issue 16) ---------------------------------------
class Passes:
    """Counts Trio scheduler passes: one task that checkpoints in a loop advances once a pass."""

    def __init__(self) -> None:
        self.count = 0

    async def run(self) -> None:
        while True:
            await trio.lowlevel.checkpoint()
            self.count += 1


def burn(seconds: float) -> None:
    end = trio.current_time() + seconds
    while trio.current_time() < end:
        pass


async def test_a_publish_leaves_and_is_confirmed_while_the_server_is_busy(redis_url: str) -> None:
    """Twenty busy tasks (0.3 ms of CPU between checkpoints) keep the server's scheduler
    full: a publish and its confirmation take a handful of scheduler passes, and the other
    server gets the message meanwhile. (Through the trio-asyncio bridge each step of redis-py
    waited for one asyncio callback per pass: dozens of passes per publish, and Redis got
    nothing while the server was busy.)"""
    a, b = fast(redis_url), fast(redis_url)
    b_in = Inbox()
    passes = Passes()
    stop = trio.Event()

    async def busy() -> None:
        while not stop.is_set():
            burn(0.0003)
            await trio.lowlevel.checkpoint()

    async with running((a, Inbox()), (b, b_in)), trio.open_nursery() as nursery:
        await b.subscribe("busy")
        await until_crossing(a, b_in, "busy")
        nursery.start_soon(passes.run)
        for _ in range(20):
            nursery.start_soon(busy)
        await trio.sleep(0.05)  # the busy tasks are running
        costs = []
        for i in range(10):
            start = passes.count
            await a.publish("busy", b"busy %d" % i)
            costs.append(passes.count - start)
        await wait_until(lambda: (("busy", b"busy 9")) in b_in.items)
        stop.set()
        nursery.cancel_scope.cancel()
    assert max(costs) <= 8, costs

"""RedisBroker against real Redis: restarts, scale-out across managers, Redis Cluster sharding."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio_asyncio

from trio_rt import Connection, RedisBroker, WebSocketManager

from .conftest import client, free_port, redis_on, two_servers, wait_until


def make(url: str, **kwargs: Any) -> WebSocketManager:
    return WebSocketManager(
        host="127.0.0.1",
        port=0,
        heartbeat_interval=None,
        broker=RedisBroker(url, reconnect_initial=0.05, reconnect_max=0.2, **kwargs),
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
            trio_asyncio.open_loop(),  # two Redis-backed managers in one process share a loop
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
            # Redis is down: this server's members are still served.
            await m1.broadcast_to_room("r", {"type": "m", "n": 2})
            assert (await a.recv())["n"] == 2
            assert b1.stats.dropped_while_down >= 1

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
            assert manager._room_channel("lonely") in broker.channels
            await a.request({"type": "leave_room", "room": "lonely"})
            assert manager._room_channel("lonely") not in broker.channels
        await wait_until(
            lambda: broker.channels == {manager._all_channel, manager._servers_channel}
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

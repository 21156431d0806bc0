"""A hash slot migrates between masters of a Redis Cluster the test owns (never the shared one):
commands follow ASK while it moves and MOVED after; a RedisBroker's sharded subscription
follows the slot to its new master and the break is announced (`on_resubscribed`)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from trio_rt import RedisBroker
from trio_rt.redis._client import RedisClusterClient
from trio_rt.redis._resp import Node, keyslot
from trio_rt.testing.services import RedisCluster
from trio_rt.testing.services._redis import redis_command

from ..conftest import wait_until

GUARD = 30.0  # deadlock protection only
CHANNEL = "trio_rt:room:moving"


@pytest.fixture
def own_cluster() -> Iterator[RedisCluster]:
    cluster = RedisCluster.start(Path(tempfile.mkdtemp(prefix="trio-rt-cluster-")))
    try:
        yield cluster
    finally:
        cluster.stop()


def node_id(node: Node) -> str:
    reply = redis_command(node[0], node[1], "CLUSTER", "MYID")
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def begin_migration(slot: int, source: Node, target: Node) -> None:
    redis_command(*target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", node_id(source))
    redis_command(*source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", node_id(target))


def finish_migration(slot: int, target: Node, nodes: list[Node]) -> None:
    for node in nodes:
        redis_command(*node, "CLUSTER", "SETSLOT", str(slot), "NODE", node_id(target))


class Inbox:
    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []

    def __call__(self, channel: str, data: bytes) -> None:
        self.items.append((channel, data))


@pytest.mark.slow
async def test_commands_follow_ask_then_moved(own_cluster: RedisCluster) -> None:
    nodes = [(n.host, n.port) for n in own_cluster.nodes]
    k = "{moving}:key"
    async with RedisClusterClient(f"redis://{own_cluster.addresses[0]}/0") as client:
        source = await client.owner(k)
        target = next(n for n in nodes if n != source)
        begin_migration(keyslot(k), source, target)
        # Not on the source: it answers ASK, and the client asks the target (ASKING + SET).
        assert await client.execute("SET", k, "v", key=k) == b"OK"
        finish_migration(keyslot(k), target, nodes)
        assert redis_command(*target, "GET", k) == b"v"  # it landed on the target
        # The client's map still names the source: MOVED, followed, and the map reloaded.
        assert await client.execute("GET", k, key=k) == b"v"
        assert await client.owner(k) == target


@pytest.mark.slow
async def test_a_sharded_subscription_follows_its_slot_to_the_new_master(
    own_cluster: RedisCluster,
) -> None:
    nodes = [(n.host, n.port) for n in own_cluster.nodes]
    url = f"redis://{own_cluster.addresses[0]}/0"
    fast = {"cluster": True, "reconnect_initial": 0.05, "reconnect_max": 0.2}
    a, b = RedisBroker(url, **fast), RedisBroker(url, **fast)  # type: ignore[arg-type]
    b_in = Inbox()
    resubscribed = trio.Event()
    b.on_resubscribed(resubscribed.set)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run, Inbox())
            await nursery.start(b.run, b_in)
            await b.subscribe(CHANNEL)
            await a.publish(CHANNEL, b"before")
            await wait_until(lambda: (CHANNEL, b"before") in b_in.items)

            async with RedisClusterClient(url) as client:
                source = await client.owner(CHANNEL)
            target = next(n for n in nodes if n != source)
            begin_migration(keyslot(CHANNEL), source, target)
            finish_migration(keyslot(CHANNEL), target, nodes)
            # The old master unsubscribed b by itself: b subscribes on the new one, and says
            # that it may have missed messages.
            await resubscribed.wait()
            assert b.stats.resubscribed == 1
            await a.publish(CHANNEL, b"after")  # MOVED on the old master, followed
            await wait_until(lambda: (CHANNEL, b"after") in b_in.items)
            assert a.stats.failed == 0 and a.stats.published == 2
            nursery.cancel_scope.cancel()

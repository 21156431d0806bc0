"""The cluster-wide rate limit on a real Redis: one user's clients spread over two servers share
one budget; the Lua arithmetic matches the sans-IO one; Redis down fails open to local limits."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from trio_rt import Connection, WebSocketManager
from trio_rt._core.ratelimit import Rate
from trio_rt.redis import RedisRateLimiter
from trio_rt.redis._client import RedisClient

from ..conftest import client, free_port


def make(limiter: RedisRateLimiter, **options: Any) -> WebSocketManager:
    manager = WebSocketManager(
        host="127.0.0.1", port=0, heartbeat_interval=None, rate_limiter=limiter, **options
    )

    @manager.on_connection
    async def identify(conn: Connection) -> None:
        users = conn.request.query.get("user")
        if users:
            conn.user_id = users[0]

    return manager


async def test_one_budget_for_a_user_across_two_servers(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    m1 = make(RedisRateLimiter(redis_url, prefix=prefix), rate_limit=4)
    m2 = make(RedisRateLimiter(redis_url, prefix=prefix), rate_limit=4)
    async with (
        m1,
        m2,
        client(m1, "/?user=ann") as a1,
        client(m2, "/?user=ann") as a2,
        client(m2, "/?user=bob") as b2,
    ):
        replies = [await c.request({"type": "ping"}) for c in (a1, a2, a1, a2)]
        assert [r["type"] for r in replies] == ["pong"] * 4
        for c in (a1, a2):  # the budget is spent on both servers
            reply = await c.request({"type": "ping", "id": 1})
            assert reply["code"] == "rate_limited" and 0 < reply["retry_after"] <= 15.0
        for _ in range(4):  # another user: another bucket
            assert (await b2.request({"type": "ping"}))["type"] == "pong"
        assert m1.stats.rate_limited == 1 and m2.stats.rate_limited == 1


async def test_script_arithmetic_and_expiry(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    limiter = RedisRateLimiter(redis_url, prefix=prefix)
    rate = Rate(2, 3600)  # 2 per hour: no refill during the test
    try:
        first = [await limiter.hit("k", rate) for _ in range(3)]
        assert [d.allowed for d in first] == [True, True, False]
        # one token is 1800 s away (minus the few ms since the bucket was touched)
        assert 1790 < first[2].retry_after <= 1800
        assert (await limiter.hit("other", rate)).allowed
        async with RedisClient(redis_url) as r:
            ttl = await r.execute("PTTL", prefix + "k")
        assert 0 < ttl <= 2 * 1800 * 1000 + 1000  # gone once the bucket would be full
        assert limiter.failures == 0
    finally:
        await limiter.aclose()


async def test_redis_down_fails_open_to_local_limits(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5)
    rate = Rate(2, 3600)
    try:
        decisions = [await limiter.hit("k", rate) for _ in range(3)]
    finally:
        await limiter.aclose()
    assert [d.allowed for d in decisions] == [True, True, False]
    assert limiter.failures == 3
    assert sum("limiting locally" in r.message for r in caplog.records) == 1


async def test_on_a_redis_cluster(redis_cluster_nodes: list[str]) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    limiter = RedisRateLimiter(f"redis://{redis_cluster_nodes[0]}/0", prefix=prefix, cluster=True)
    rate = Rate(3, 3600)
    try:
        # many keys: they land on different shards
        for key in (f"u:{i}" for i in range(20)):
            decisions = [await limiter.hit(key, rate) for _ in range(4)]
            assert [d.allowed for d in decisions] == [True, True, True, False]
        assert limiter.failures == 0
    finally:
        await limiter.aclose()


async def test_user_ids_cannot_share_a_bucket_on_redis(redis_url: str) -> None:
    """User `bob:echo` spends only her own budget, never user `bob`'s `echo` budget: the keys
    in Redis are `bucket_key`'s (once f"u:{user}" + ":" + type, which collided)."""

    prefix = f"test:{uuid.uuid4().hex}:"
    m = make(RedisRateLimiter(redis_url, prefix=prefix), rate_limit=3, rate_limits={"echo": 3})

    @m.on_message("echo")
    async def echo(conn: Connection, message: dict[str, Any]) -> None:
        await conn.send({"type": "echo"})

    async with (
        m,
        client(m, "/?user=bob") as bob,
        client(m, "/?user=bob%3Aecho") as mallory,
    ):
        for _ in range(3):
            assert (await mallory.request({"type": "ping"}))["type"] == "pong"
        assert (await mallory.request({"type": "ping"}))["code"] == "rate_limited"
        for _ in range(3):
            assert (await bob.request({"type": "echo"}))["type"] == "echo"
        async with RedisClient(redis_url) as r:
            keys = await r.execute("KEYS", prefix + "*")
        assert sorted(k.decode() for k in keys) == [
            prefix + "u:3:bob:echo",
            prefix + "u:8:bob:echo",
        ]

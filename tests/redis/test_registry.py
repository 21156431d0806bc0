"""ServerRegistry against real Redis: joining, leaving, crashing, agreeing on owners."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio

from trio_rt._core.rendezvous import rendezvous_owner
from trio_rt.redis import ServerRegistry

from ..conftest import free_port, redis_on

KEYS = [f"user:{i}" for i in range(1_000)]


def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"  # tests never see each other's servers


def make(url: str, ns: str, n: int, **kwargs: Any) -> ServerRegistry:
    kwargs.setdefault("heartbeat_interval", 0.2)
    kwargs.setdefault("ttl", 0.6)
    return ServerRegistry(url, f"s{n}", f"127.0.0.1:{3000 + n}", namespace=ns, **kwargs)


async def eventually(predicate: Callable[[], Awaitable[bool]], limit: float = 10.0) -> None:
    """Poll an async predicate; fail after `limit` s (a deadlock guard, not a timing test)."""
    with trio.fail_after(limit):
        while not await predicate():  # noqa: ASYNC110
            await trio.sleep(0.02)


@asynccontextmanager
async def fleet(registries: list[ServerRegistry]) -> AsyncIterator[trio.Nursery]:
    """Run the registries in one nursery."""
    async with trio.open_nursery() as nursery:
        for registry in registries:
            await nursery.start(registry.run)
        try:
            yield nursery
        finally:
            for registry in registries:
                registry.stop()


async def test_join_leave_crash(redis_url: str) -> None:
    ns = namespace()
    a, b = make(redis_url, ns, 1), make(redis_url, ns, 2)
    c = make(redis_url, ns, 3, ttl=2.0)  # a ttl long enough to see the crashed entry linger
    async with fleet([a, b, c]):
        expected = {"s1": "127.0.0.1:3001", "s2": "127.0.0.1:3002", "s3": "127.0.0.1:3003"}
        for registry in (a, b, c):
            assert registry.registered
            assert await registry.live_servers() == expected
        # Heartbeats refresh every registry's snapshot, too.
        await eventually(lambda: _sync(all(r.servers == expected for r in (a, b, c))))

        # A clean exit deregisters at once: no waiting for the ttl.
        b.stop()
        await eventually(lambda: _sync(not b._running))
        assert set(await a.live_servers()) == {"s1", "s3"}
        assert set(await c.live_servers()) == {"s1", "s3"}

        # A crash leaves the entry behind until its ttl has passed.
        c.crash()
        assert "s3" in await a.live_servers()

        async def c_expired() -> bool:
            return set(await a.live_servers()) == {"s1"}

        await eventually(c_expired)
        # The crashed server's own view agrees (queries still work after a crash).
        assert set(await c.live_servers()) == {"s1"}


async def _sync(value: bool) -> bool:
    await trio.lowlevel.checkpoint()
    return value


async def test_owners_agree_and_only_the_leavers_keys_move(redis_url: str) -> None:
    ns = namespace()
    regs = [make(redis_url, ns, n) for n in range(1, 5)]
    async with fleet(regs):
        first = {k: await regs[0].owner(k) for k in KEYS}
        second = {k: await regs[1].owner(k) for k in KEYS}
        assert first == second
        assert {owner for owner in first.values() if owner} == {
            (r.server_id, r.address) for r in regs
        }
        # The snapshot is as of the registry's last heartbeat (`cached_owner` may be stale):
        # regs[2] started before regs[3] and sees it from its next heartbeat on.
        await eventually(lambda: _sync(len(regs[2].servers) == len(regs)))
        assert all(regs[2].cached_owner(k) == first[k] for k in KEYS)

        leaver = regs[3]
        leaver.stop()
        await eventually(lambda: _sync(not leaver._running))
        after = {k: await regs[0].owner(k) for k in KEYS}
        moved = {k for k in KEYS if after[k] != first[k]}
        owned = {k for k in KEYS if first[k] == (leaver.server_id, leaver.address)}
        assert moved == owned
        assert owned  # 1,000 keys over 4 servers: the leaver owned some
        # Each moved key went to the owner among the servers that are left.
        for k in moved:
            owner = rendezvous_owner(k, ["s1", "s2", "s3"])
            assert owner is not None
            assert after[k] == (owner, regs[0].servers[owner])


async def test_context_manager_and_queries_from_outside_the_loop(redis_url: str) -> None:
    # One registry on its own: it opens its own trio-asyncio loop, and the test task (outside
    # that loop) still queries it.
    ns = namespace()
    async with make(redis_url, ns, 1) as registry:
        assert registry.registered
        assert await registry.live_servers() == {"s1": "127.0.0.1:3001"}
        assert await registry.owner("anyone") == ("s1", "127.0.0.1:3001")
    # Deregistered on exit: a fresh registry in the namespace sees only itself.
    async with make(redis_url, ns, 2) as other:
        assert await other.live_servers() == {"s2": "127.0.0.1:3002"}


async def test_body_exception_propagates_unwrapped(redis_url: str) -> None:
    with pytest.raises(KeyError):
        async with make(redis_url, namespace(), 1):
            raise KeyError("boom")


async def test_cancellation_deregisters(redis_url: str) -> None:
    ns = namespace()
    a, b = make(redis_url, ns, 1), make(redis_url, ns, 2)
    async with trio.open_nursery() as outer:
        await outer.start(a.run)
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as inner:
                await inner.start(b.run)
                assert set(await a.live_servers()) == {"s1", "s2"}
                scope.cancel()
        assert set(await a.live_servers()) == {"s1"}
        a.stop()


async def test_redis_down_never_crashes_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_rt.registry")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    registry = make(url, namespace(), 1, heartbeat_interval=0.1, ttl=0.5, retry_initial=0.02)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(registry)  # starts although Redis is not there
        assert not registry.registered
        assert any("heartbeat" in r.getMessage() for r in caplog.records)
        with pytest.raises(Exception):  # noqa: B017 - whatever redis-py raises for "refused"
            await registry.live_servers()
        with redis_on(port):
            await eventually(lambda: _sync(registry.registered))
            assert await registry.live_servers() == {"s1": "127.0.0.1:3001"}
        # Redis gone again: the registry keeps running and logs, then stops cleanly.
        await eventually(lambda: _sync(not registry.registered))


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("redis://x", "", "a"), {}),
        (("redis://x", "has space", "a"), {}),
        (("redis://x", "tab\tid", "a"), {}),
        (("redis://x", "bell\x07", "a"), {}),
        (("redis://x", "ok", ""), {}),
        (("http://x", "ok", "a"), {}),
        (("redis://x", "ok", "a"), {"heartbeat_interval": 0}),
        (("redis://x", "ok", "a"), {"heartbeat_interval": -1}),
        (("redis://x", "ok", "a"), {"ttl": float("nan")}),
        (("redis://x", "ok", "a"), {"heartbeat_interval": 2.0, "ttl": 2.0}),
        (("redis://x", "ok", "a"), {"heartbeat_interval": 2.0, "ttl": 1.0}),
        (("redis://x", "ok", "a"), {"namespace": "a{b}"}),
        (("redis://x", "ok", "a"), {"namespace": ""}),
    ],
)
def test_bad_settings_are_refused(args: tuple[str, str, str], kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ServerRegistry(*args, **kwargs)


async def test_queries_before_run_are_refused() -> None:
    with pytest.raises(RuntimeError):
        await ServerRegistry("redis://127.0.0.1:1/0", "s", "a").live_servers()

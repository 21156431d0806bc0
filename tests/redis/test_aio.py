"""AioCaller: asyncio calls for Trio callers, and what callers get when it stops."""

from __future__ import annotations

import asyncio

import pytest
import trio

from trio_rt.redis._aio import AioCaller, Call


async def test_results_and_exceptions_cross_the_bridge() -> None:
    caller = AioCaller("test caller")

    async def add() -> int:
        await asyncio.sleep(0)
        return 42

    async def fail() -> int:
        await asyncio.sleep(0)
        raise KeyError("boom")

    async with trio.open_nursery() as nursery:
        await nursery.start(caller.run)
        assert caller.running
        assert await caller.call(add) == 42
        with pytest.raises(KeyError):
            await caller.call(fail)
        nursery.cancel_scope.cancel()
    assert not caller.running
    with pytest.raises(RuntimeError, match="not running"):
        await caller.call(add)


async def test_calls_still_queued_when_it_stops_fail_instead_of_hanging() -> None:
    caller = AioCaller("test caller")

    async def never() -> None:  # pragma: no cover - must not run
        raise AssertionError("a queued call ran after the caller stopped")

    calls = [Call(never, "the call did not finish") for _ in range(3)]
    async with trio.open_nursery() as nursery:
        await nursery.start(caller.run)
        for call in calls:  # queued in one pass: the runner takes at most the first
            caller._send.send_nowait(call)
        nursery.cancel_scope.cancel()
    with trio.fail_after(5):  # a deadlock guard: before the fix, these waited forever
        for call in calls:
            with pytest.raises(RuntimeError, match="did not finish"):
                await call.result()

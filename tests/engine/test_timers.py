"""Timers: many keys' deadlines, one task. Trio's autojump clock: no real time passes."""

from __future__ import annotations

import trio
import trio.testing

from trio_rt._engine.timers import Timers


async def test_keys_fire_once_in_deadline_order(autojump_clock: trio.testing.MockClock) -> None:
    timers = Timers[str]()
    fired: list[tuple[str, float]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run, lambda k: fired.append((k, trio.current_time())))
        await trio.testing.wait_all_tasks_blocked()
        t0 = trio.current_time()
        timers.set("b", t0 + 2)
        timers.set("a", t0 + 1)  # earlier than the one the task sleeps for: it wakes sooner
        timers.set("c", t0 + 3)
        timers.cancel("c")
        await trio.sleep(5)
        assert fired == [("a", t0 + 1), ("b", t0 + 2)]
        assert len(timers) == 0
        nursery.cancel_scope.cancel()


async def test_set_replaces_a_deadline_and_fire_may_set_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timers = Timers[str]()
    fired: list[float] = []

    def fire(key: str) -> None:
        fired.append(trio.current_time() - t0)
        if len(fired) < 3:
            timers.set(key, trio.current_time() + 1)  # a periodic key

    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run, fire)
        t0 = trio.current_time()
        timers.set("k", t0 + 10)
        timers.set("k", t0 + 1)  # replaced: the stale t0 + 10 entry is skipped
        await trio.sleep(20)
        assert fired == [1, 2, 3]
        nursery.cancel_scope.cancel()


def test_replaced_entries_are_compacted() -> None:
    timers = Timers[int]()
    for i in range(10_000):
        timers.set(i % 10, float(i))  # ten keys, each replaced again and again
    assert len(timers) == 10
    assert timers.heap_size <= 2 * 10 + 64 + 1

"""Streams, sans-IO and in memory: positions, StreamCursor, MemorySequencer, recovery."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_rt._core.protocol import ProtocolError, StreamPosition, parse_position
from trio_rt._engine.streams import (
    Allocation,
    MemorySequencer,
    MemoryStreamStore,
    StreamCursor,
    StreamEntry,
    recover,
)


def entry(offset: int, epoch: str = "e") -> StreamEntry:
    return StreamEntry(StreamPosition(offset, epoch), offset, f'{{"n":{offset}}}')


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        {"offset": -1, "epoch": "e"},
        {"offset": True, "epoch": "e"},
        {"offset": 2**60, "epoch": "e"},
        {"offset": 1.5, "epoch": "e"},
        {"offset": 1, "epoch": ""},
        {"offset": 1, "epoch": 3},
        {"offset": 1, "epoch": "x" * 65},
        {"offset": 1, "epoch": "e", "extra": 1},
    ],
)
def test_bad_positions_are_refused_with_the_field_named(raw: object) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_position(raw, field="since")
    assert "since" in info.value.message


def test_cursor_delivers_in_order_and_once() -> None:
    cursor = StreamCursor("e", 0)
    assert [e.position.offset for e in cursor.feed([entry(2), entry(1), entry(3)], 0)] == [1, 2, 3]
    assert cursor.feed([entry(1), entry(2), entry(3)], 0) == []  # re-read: nothing twice
    assert cursor.done == 3


def test_cursor_holds_entries_behind_a_hole_until_it_fills() -> None:
    cursor = StreamCursor("e", 0, hole_timeout=5)
    assert [e.position.offset for e in cursor.feed([entry(1), entry(3), entry(4)], 0)] == [1]
    assert cursor.holding
    assert cursor.feed([entry(3), entry(4)], 1) == []
    ready = cursor.feed([entry(2), entry(3), entry(4)], 2)
    assert [e.position.offset for e in ready] == [2, 3, 4]
    assert not cursor.holding and cursor.skipped == 0


def test_cursor_skips_a_hole_after_the_timeout() -> None:
    cursor = StreamCursor("e", 0, hole_timeout=5)
    cursor.feed([entry(2)], 10)
    assert cursor.next_hole_deadline() == 15
    assert cursor.feed([], 14.9) == []
    assert [e.position.offset for e in cursor.feed([], 15)] == [2]
    assert cursor.skipped == 1
    # The late write is not delivered twice, nor out of order, if it shows up after all.
    assert cursor.feed([entry(1)], 16) == []


def test_cursor_ignores_other_epochs_and_settled_entries() -> None:
    cursor = StreamCursor("e", 0)
    cursor.settle_existing([2, 3])
    # 1 is a hole below the entries that existed at the start: still delivered when it fills.
    assert [e.position.offset for e in cursor.feed([entry(1), entry(2), entry(3)], 0)] == [1]
    assert cursor.done == 3
    assert cursor.feed([entry(4, "other")], 0) == []


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.randoms(use_true_random=False))
def test_cursor_exactly_once_in_order_whatever_the_visibility_order(
    n: int, rnd: random.Random
) -> None:
    # Writes become visible in a random order; each read sees a growing random subset.
    order = list(range(1, n + 1))
    rnd.shuffle(order)
    cursor = StreamCursor("e", 0, hole_timeout=1e9)
    visible: list[int] = []
    delivered: list[int] = []
    for offset in order:
        visible.append(offset)
        sample = [entry(o) for o in visible if o > cursor.done and rnd.random() < 0.9]
        delivered += [e.position.offset for e in cursor.feed(sample, 0)]
    delivered += [e.position.offset for e in cursor.feed([entry(o) for o in visible], 0)]
    assert delivered == list(range(1, n + 1))


async def test_memory_sequencer_grows_offsets_and_timestamps_despite_a_clock_going_back() -> None:
    clock = iter([5_000_000, 4_000_000, 4_000_000, 9_000_000])
    seq = MemorySequencer(clock=lambda: next(clock))
    allocations = [await seq.next("s") for _ in range(4)]
    assert [a.position.offset for a in allocations] == [1, 2, 3, 4]
    stamps = [a.timestamp for a in allocations]
    assert stamps == sorted(stamps) and len(set(stamps)) == 4
    assert len({a.position.epoch for a in allocations}) == 1
    assert await seq.current("s") == allocations[-1].position
    assert (await seq.current("other")).offset == 0


async def test_memory_sequencer_continues_the_store_head() -> None:
    store = MemoryStreamStore()
    future = time.time_ns() // 1000 + 10_000_000  # the head was written by a clock ahead of ours
    await store.append("s", Allocation(StreamPosition(41, "old"), future), "{}")
    seq = MemorySequencer()
    seq.attach(store)
    allocation = await seq.next("s")
    assert allocation.position == StreamPosition(42, "old")
    assert allocation.timestamp > future


async def test_recovery_replays_or_says_why_not() -> None:
    store = MemoryStreamStore(max_entries=5)
    seq = MemorySequencer()
    seq.attach(store)
    for _ in range(8):
        allocation = await seq.next("s")
        await store.append("s", allocation, "{}")
    current = await seq.current("s")
    epoch = current.epoch
    ok = await recover(store, "s", StreamPosition(6, epoch), current, limit=10)
    assert ok.recovered and [e.position.offset for e in ok.entries] == [7, 8]
    assert (await recover(store, "s", StreamPosition(8, epoch), current, limit=10)).entries == []
    gone = await recover(store, "s", StreamPosition(2, epoch), current, limit=10)
    assert gone.reason == "retention"  # only the last 5 are kept
    assert (await recover(store, "s", StreamPosition(0, epoch), current, limit=10)).reason == (
        "retention"
    )
    other = await recover(store, "s", StreamPosition(6, "nope"), current, limit=10)
    assert other.reason == "epoch_changed"
    many = await recover(store, "s", StreamPosition(4, epoch), current, limit=2)
    assert many.reason == "too_many"


async def test_memory_store_latest_pages_backwards() -> None:
    store = MemoryStreamStore()
    now = time.time_ns() // 1000
    for i in range(1, 11):
        await store.append("s", Allocation(StreamPosition(i, "e"), now + i), str(i))
    assert [e.payload for e in await store.latest("s", "e", 3)] == ["8", "9", "10"]
    assert [e.payload for e in await store.latest("s", "e", 3, before=8)] == ["5", "6", "7"]
    assert await store.latest("s", "other", 3) == []

"""StreamCursor (sans-IO): whole gaps skipped at once, holes timed from the oldest waiting
entry, entries settled at the start, and exactly-once in order whatever happens."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_rt._engine.streams import StreamCursor, StreamEntry, StreamPosition


def entry(offset: int, epoch: str = "e") -> StreamEntry:
    return StreamEntry(StreamPosition(offset, epoch), 0, "{}")


def offsets(entries: list[StreamEntry]) -> list[int]:
    return [e.position.offset for e in entries]


def test_a_reseed_gap_costs_one_hole_timeout_not_one_per_offset() -> None:
    # RedisSequencer lost its hash and continued 1,000 offsets further on: 11..1010 never exist.
    cursor = StreamCursor("e", 10, hole_timeout=10)
    assert offsets(cursor.feed([entry(1011), entry(1012)], 100)) == []
    assert cursor.next_hole_deadline() == 110
    assert offsets(cursor.feed([], 109.9)) == []
    assert offsets(cursor.feed([], 110)) == [1011, 1012]
    assert cursor.skipped == 1000 and cursor.done == 1012
    assert not cursor.holding and cursor.next_hole_deadline() is None
    # Late writes into the skipped gap are not handed out (nor out of order).
    assert cursor.feed([entry(500), entry(1013)], 111) == [entry(1013)]


def test_a_second_hole_is_timed_from_the_oldest_waiting_entry() -> None:
    cursor = StreamCursor("e", 0, hole_timeout=10)
    cursor.feed([entry(9)], 0)  # 1..8 missing since 0
    cursor.feed([entry(5)], 9)  # 5 lands late: 6..8 have been missing since 0 too
    assert offsets(cursor.feed([], 10)) == [5, 9]  # both gaps are past the timeout
    assert cursor.skipped == 7


def test_a_hole_with_a_recent_entry_behind_it_waits_its_full_timeout() -> None:
    cursor = StreamCursor("e", 0, hole_timeout=10)
    cursor.feed([entry(2)], 0)
    assert offsets(cursor.feed([entry(1)], 5)) == [1, 2]
    cursor.feed([entry(4)], 8)  # a new hole at 3, opened at 8
    assert offsets(cursor.feed([], 17.9)) == []
    assert offsets(cursor.feed([], 18)) == [4]
    assert cursor.skipped == 1


def test_settled_entries_pass_silently_and_old_holes_below_them_go_at_the_first_feed() -> None:
    cursor = StreamCursor("e", 100, hole_timeout=10)
    # Visible at the start: 101..103, then a gap (104..199), then 200..202, written long ago.
    cursor.settle_existing([101, 102, 103, 200, 201, 202], since=-60.0)
    assert cursor.settled_upto == 202
    assert cursor.feed([entry(203)], 0) == [entry(203)]
    assert cursor.done == 203 and cursor.skipped == 96 and cursor.settled_upto == 203


def test_settled_entries_without_a_time_wait_from_the_next_feed() -> None:
    cursor = StreamCursor("e", 0, hole_timeout=10)
    cursor.settle_existing([2, 3])
    assert cursor.next_hole_deadline() is None
    assert cursor.feed([], 50) == []
    assert cursor.done == 0 and cursor.settled_upto == 3
    assert cursor.next_hole_deadline() == 60
    # 1 fills: handed out; 2 and 3 are passed without being handed out.
    assert offsets(cursor.feed([entry(1), entry(2), entry(3), entry(4)], 51)) == [1, 4]
    assert cursor.settled_upto == cursor.done == 4


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 60),
    st.floats(0.5, 5),
    st.integers(0, 2**32),
)
def test_each_offset_at_most_once_in_order_and_every_timely_write_delivered(
    n: int, timeout: float, seed: int
) -> None:
    rnd = random.Random(seed)
    # Each offset is written (visible from some time on) or never, in a random order.
    visible_at = {o: rnd.uniform(0, 20) for o in range(1, n + 1) if rnd.random() < 0.8}
    cursor = StreamCursor("e", 0, hole_timeout=timeout)
    delivered: list[int] = []
    now = 0.0
    while now < 40:
        now += rnd.uniform(0, 1.5)
        sample = [entry(o) for o, t in visible_at.items() if t <= now and o > cursor.done]
        rnd.shuffle(sample)
        delivered += offsets(cursor.feed(sample, now))
    delivered += offsets(cursor.feed([entry(o) for o in visible_at], now + 2 * timeout))
    assert delivered == sorted(set(delivered))  # in order, each once
    assert set(delivered) <= set(visible_at)
    # Skipped offsets are exactly those never handed out below the end.
    assert cursor.done == max(visible_at, default=0)
    assert cursor.skipped == cursor.done - len(delivered)
    # A write visible before anything waited behind its hole for `timeout` is delivered.
    for o, t in visible_at.items():
        later = [u for p, u in visible_at.items() if p > o]
        if later and t + 1.5 < min(later) + timeout:
            assert o in delivered

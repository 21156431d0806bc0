"""ReorderBuffer (sans-IO): a room's positioned messages in offset order, each once, holes
healed from the store, duplicates dropped; and OffsetRanges, its bounded set of skipped ranges."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_rt._core.reorder import OffsetRanges, ReorderBuffer, StoreRead

E = "e1"


def buffer(window: float = 0.2, limit: int = 100, start: int | None = 0) -> ReorderBuffer[int]:
    b = ReorderBuffer[int](window, limit)
    if start is not None:
        assert b.start(E, start, 0.0) == []
    return b


def answer(b: ReorderBuffer[int], store: Iterable[int], now: float) -> list[int]:
    """Answer every read the buffer wants from `store` (the offsets it has)."""
    out: list[int] = []
    have = set(store)
    while reads := b.take_reads():
        for read in reads:
            found = [(o, o) for o in range(read.after + 1, read.upto + 1) if o in have]
            out.extend(b.healed(read, found, now, read.upto))
    return out


# -- OffsetRanges -------------------------------------------------------------------------------
def test_offset_ranges_merge_split_and_stay_bounded() -> None:
    r = OffsetRanges(bound=3)
    r.add(5, 7)
    r.add(8, 9)  # touching: merged
    r.add(1, 1)
    assert list(r) == [(1, 1), (5, 9)] and 6 in r and 4 not in r
    r.discard(7)
    assert list(r) == [(1, 1), (5, 6), (8, 9)]
    r.discard(5)
    r.discard(6)
    assert list(r) == [(1, 1), (8, 9)]
    r.add(20, 30)
    r.add(40, 40)  # a 4th range: the lowest is forgotten
    assert list(r) == [(8, 9), (20, 30), (40, 40)] and 1 not in r
    r.add(0, 100)  # covers all: one range
    assert list(r) == [(0, 100)] and r.lowest() == 0


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 60), st.integers(0, 8)), max_size=60))
def test_offset_ranges_behave_as_a_set(ops: list[tuple[bool, int, int]]) -> None:
    r = OffsetRanges(bound=1000)
    model: set[int] = set()
    for add, low, width in ops:
        if add:
            r.add(low, low + width)
            model.update(range(low, low + width + 1))
        else:
            r.discard(low)
            model.discard(low)
    assert {o for a, b in r for o in range(a, b + 1)} == model
    assert all(o in r for o in model) and all(o not in r for o in range(-1, 80) if o not in model)
    pairs = list(r)
    assert all(b1 + 1 < a2 for (_, b1), (a2, _) in itertools.pairwise(pairs))


# -- start, order, duplicates -----------------------------------------------------------------
def test_in_order_messages_come_out_at_once() -> None:
    b = buffer()
    assert [b.feed(E, o, o, now=0.0) for o in (1, 2, 3)] == [[1], [2], [3]]
    assert not b.holding and b.deadline() is None and b.skipped == 0


def test_the_start_is_the_first_members_position_and_what_is_below_is_the_past() -> None:
    b = buffer(start=None)
    assert b.feed(E, 42, 42, 0.0) == []  # before the start: waits for it
    assert b.feed(E, 40, 40, 0.0) == []
    assert b.feed(E, 41, 41, 0.0) == []
    assert b.start(E, 40, 0.01) == [41, 42]  # 40 is the past: never handed out
    assert b.duplicates == 1 and b.done == 42
    assert b.feed(E, 39, 39, 0.1) == [] and b.duplicates == 2  # in flight, from before


def test_without_a_start_the_first_message_starts_the_order_after_the_window() -> None:
    b = ReorderBuffer[int](0.2, 100)
    assert b.feed(E, 7, 7, 0.0) == [] and b.deadline() == 0.2
    assert b.release(0.1) == []
    assert b.release(0.2) == [7] and b.started and b.done == 7


def test_a_message_behind_a_hole_waits_until_the_hole_fills() -> None:
    b = buffer()
    assert b.feed(E, 1, 1, 0.0) == [1]
    assert b.feed(E, 3, 3, 0.0) == []
    assert b.feed(E, 4, 4, 0.05) == []
    assert b.holding and b.deadline() == 0.2  # the oldest held message's wait
    assert b.feed(E, 2, 2, 0.1) == [2, 3, 4]
    assert not b.holding and b.skipped == 0 and b.late == 0 and b.take_reads() == []


def test_a_message_handed_out_or_held_is_never_handed_out_again() -> None:
    b = buffer()
    assert b.feed(E, 1, 1, 0.0) == [1]
    assert b.feed(E, 1, 1, 0.0) == []  # a republish
    b.feed(E, 3, 3, 0.0)
    assert b.feed(E, 3, 3, 0.0) == []  # held already
    assert b.feed(E, 2, 2, 0.0) == [2, 3]
    assert b.feed(E, 2, 2, 0.0) == [] and b.duplicates == 3 and b.late == 0


# -- holes: healed from the store -------------------------------------------------------------
def test_a_hole_whose_window_passed_is_read_from_the_store_and_filled_in_order() -> None:
    b = buffer()
    b.feed(E, 1, 1, 0.0)
    b.feed(E, 3, 3, 1.0)
    b.feed(E, 5, 5, 1.1)
    assert b.release(1.19) == [] and b.take_reads() == []
    assert b.release(1.2) == []  # not skipped: a read is wanted
    (read,) = b.take_reads()
    assert read == StoreRead(E, 1, 5, True) and b.reading and b.deadline() is None
    assert b.release(5.0) == []  # waits for the answer, however long the clock runs
    out = b.healed(read, [(2, 2), (3, 3), (4, 4)], 1.3, covered=5)
    assert out == [2, 3, 4, 5] and b.done == 5 and b.skipped == 0 and b.filled == 2
    assert b.duplicates == 1  # 3 came from the broker and from the store


def test_offsets_the_store_does_not_have_are_skipped_as_one_range() -> None:
    """A reseed gap: 1,000 offsets never written cost one read, not 1,000 windows."""
    b = buffer()
    b.feed(E, 1, 1, 0.0)
    b.feed(E, 1002, 1002, 0.0)
    b.feed(E, 1003, 1003, 0.0)
    b.release(0.2)
    (read,) = b.take_reads()
    assert (read.after, read.upto) == (1, 1003)
    assert b.healed(read, [(1002, 1002), (1003, 1003)], 0.3, covered=1003) == [1002, 1003]
    assert b.skipped == 1000 and list(b.missing) == [(2, 1001)] and b.take_gaps() == []
    assert b.feed(E, 1004, 1004, 0.3) == [1004]  # no wait after it
    # One of them was only slow (allocated, written late): it comes out late, once.
    assert b.feed(E, 500, 500, 0.4) == [500] and b.late == 1
    assert b.feed(E, 500, 500, 0.4) == [] and b.duplicates == 3  # (1002, 1003 read too)
    assert list(b.missing) == [(2, 499), (501, 1001)]


def test_a_store_answer_covering_part_of_the_hole_asks_for_the_rest() -> None:
    b = buffer()
    b.feed(E, 1, 1, 0.0)
    b.feed(E, 10, 10, 0.0)
    b.release(0.2)
    (read,) = b.take_reads()
    assert b.healed(read, [(2, 2), (3, 3)], 0.3, covered=3) == [2, 3]  # a page: up to 3
    (rest,) = b.take_reads()
    assert (rest.after, rest.upto) == (3, 10) and b.skipped == 0
    assert b.healed(rest, [], 0.4, covered=10) == [10] and b.skipped == 6


def test_when_the_store_cannot_answer_the_hole_is_skipped_and_reported() -> None:
    b = buffer()
    b.feed(E, 1, 1, 0.0)
    b.feed(E, 4, 4, 0.0)
    b.release(0.2)
    (read,) = b.take_reads()
    assert b.unhealed(read, 5.0) == [4]
    assert b.take_gaps() == [(2, 3)] and b.take_gaps() == [] and b.skipped == 2
    assert b.feed(E, 3, 3, 5.1) == [3] and b.late == 1  # it still comes out if it arrives


def test_a_message_arriving_while_the_store_is_read_fills_the_hole() -> None:
    b = buffer()
    b.feed(E, 1, 1, 0.0)
    b.feed(E, 3, 3, 0.0)
    b.release(0.2)
    (read,) = b.take_reads()
    assert b.feed(E, 2, 2, 0.25) == [2, 3]
    assert b.healed(read, [(2, 2)], 0.3, covered=3) == [] and b.duplicates == 1


def test_at_most_limit_messages_are_held_then_the_hole_is_skipped_and_read_late() -> None:
    b = buffer(window=60.0, limit=3)
    b.feed(E, 1, 1, 0.0)
    for o in (3, 4, 5):
        assert b.feed(E, o, o, 0.0) == []
    assert b.feed(E, 7, 7, 0.0) == [3, 4, 5]  # the 4th held: the hole at 2 is skipped
    assert b.skipped == 1 and b.is_held(7) and b.done == 5
    (read,) = b.take_reads()
    assert read == StoreRead(E, 1, 2, False)  # read afterwards: what it finds comes out late
    assert b.healed(read, [(2, 2)], 0.1, covered=2) == [2] and b.late == 1


def test_a_zero_window_never_holds_and_reads_the_holes_afterwards() -> None:
    b = buffer(window=0.0)
    b.feed(E, 1, 1, 0.0)
    assert b.feed(E, 3, 3, 0.0) == [3] and b.skipped == 1
    assert answer(b, {2}, 0.0) == [2] and b.late == 1


# -- recovery reaches back; epochs ----------------------------------------------------------------
def test_reach_back_lets_offsets_from_before_the_start_come_out_late_once() -> None:
    b = buffer(start=10)
    b.reach_back(E, 6)  # a member recovering from 6 joined: 7..10 were never handed out
    assert b.feed(E, 8, 8, 0.0) == [8] and b.late == 1
    assert b.feed(E, 8, 8, 0.0) == [] and b.feed(E, 6, 6, 0.0) == []
    b.reach_back(E, 8)  # asks for less: nothing changes
    assert list(b.missing) == [(7, 7), (9, 10)]
    b.reach_back(E, 2)  # further back: only the part not reached yet
    assert list(b.missing) == [(3, 7), (9, 10)]
    b2 = buffer(start=None)
    b2.reach_back(E, 4)  # before the start: applied by it
    b2.reach_back("other", 1)
    b2.start(E, 9, 0.0)
    assert list(b2.missing) == [(5, 9)]


def test_an_epoch_change_hands_out_the_old_epoch_and_starts_over() -> None:
    b = buffer()
    b.feed(E, 1, 1, 0.0)
    b.feed(E, 3, 3, 0.0)
    assert b.feed("e2", 1, 101, 0.1) == [3, 101]  # the old epoch's held ones first
    assert b.epoch == "e2" and b.done == 1 and not b.holding
    assert b.feed(E, 2, 2, 0.1) == [2]  # a straggler of the old epoch: at once, no reset
    assert b.epoch == "e2" and b.feed("e2", 2, 102, 0.1) == [102]


def test_a_new_epoch_is_due_from_its_first_offset() -> None:
    b = buffer()
    b.feed(E, 1, 1, 0.0)
    assert b.feed("e2", 2, 102, 0.1) == []  # e2's 1 has not come yet: a hole
    assert b.feed("e2", 1, 101, 0.1) == [101, 102]


def test_a_read_of_an_epoch_left_meanwhile_is_ignored() -> None:
    b = buffer()
    b.feed(E, 1, 1, 0.0)
    b.feed(E, 3, 3, 0.0)
    b.release(0.2)
    (read,) = b.take_reads()
    assert b.feed("e2", 1, 5, 0.3) == [3, 5]
    assert b.healed(read, [(2, 2)], 0.4, covered=3) == [] and b.unhealed(read, 0.4) == []


# -- properties ---------------------------------------------------------------------------------
@settings(max_examples=300)
@given(
    st.integers(1, 40),
    st.data(),
)
def test_with_a_store_every_written_offset_comes_out_once_in_order(
    n: int, data: st.DataObject
) -> None:
    """Some offsets are never written (refused writes, reseed gaps); the broker loses some of
    the written ones and repeats others, in any order. Healing from the store, the members get
    exactly the written offsets after the start, each once, in offset order."""
    written = set(data.draw(st.sets(st.integers(1, n)), label="written"))
    start = data.draw(st.integers(0, n), label="start")
    delivered = data.draw(st.lists(st.sampled_from(sorted(written) or [0])), label="arrivals")
    delivered = [o for o in delivered if o in written]
    b = buffer(window=1.0, limit=1000, start=start)
    out: list[int] = []
    now = 0.0
    for o in delivered:
        now += data.draw(st.sampled_from([0.0, 0.3, 1.5]))
        out.extend(b.release(now))
        out.extend(answer(b, written, now))
        out.extend(b.feed(E, o, o, now))
        out.extend(answer(b, written, now))
    # The last written offset always arrives eventually (through the broker or a resync).
    last = max(written) if written else None
    if last is not None:
        out.extend(b.feed(E, last, last, now))
    out.extend(b.release(now + 10))
    out.extend(answer(b, written, now + 10))
    expected = sorted(o for o in written if o > start)
    assert out == expected
    assert b.late == 0 and not b.holding


@settings(max_examples=300)
@given(st.permutations(list(range(1, 30))), st.integers(0, 28), st.integers(1, 6))
def test_whatever_the_arrival_order_and_limit_each_message_comes_out_once(
    order: list[int], first_index: int, limit: int
) -> None:
    """No loss, no repeat, even with holes skipped by the limit and healed late."""
    b = buffer(window=1.0, limit=limit)
    out: list[int] = []
    for i, o in enumerate(order + order[:5]):  # five arrive twice
        out.extend(b.feed(E, o, o, 5.0 if i >= first_index else 0.0))
        out.extend(answer(b, range(1, 30), 5.0))
    out.extend(b.release(100.0))
    out.extend(answer(b, range(1, 30), 100.0))
    assert sorted(out) == list(range(1, 30))


# -- writes still landing (write_timeout) -------------------------------------------------------
def test_a_hole_still_being_written_is_read_again_and_comes_out_in_order() -> None:
    """Offset 2 was allocated before 3, but its store write lands after 3 was published and
    after the first read of the hole: with `write_timeout` the hole is read again every
    `window` instead of being skipped, and 2 comes out before 3 (not late)."""
    b = ReorderBuffer[int](0.2, 100, write_timeout=2.0)
    b.start(E, 0, 0.0)
    assert b.feed(E, 1, 1, 0.0) == [1]
    assert b.feed(E, 3, 3, 0.0) == []
    assert b.release(0.2) == []
    (read,) = b.take_reads()
    assert b.healed(read, [(3, 3)], 0.25, covered=3) == []  # 2: not in the store yet
    assert b.skipped == 0 and b.holding and b.deadline() == 0.45
    assert b.release(0.3) == [] and b.take_reads() == []  # not before the retry
    assert b.release(0.45) == []
    (again,) = b.take_reads()
    assert (again.after, again.upto) == (1, 3)
    assert b.healed(again, [(2, 2), (3, 3)], 0.5, covered=3) == [2, 3]
    assert b.late == 0 and b.skipped == 0 and not b.holding


def test_a_hole_not_written_within_write_timeout_is_skipped_then_comes_out_late() -> None:
    b = ReorderBuffer[int](0.2, 100, write_timeout=1.0)
    b.start(E, 0, 0.0)
    b.feed(E, 1, 1, 0.0)
    b.feed(E, 3, 3, 0.0)
    b.feed(E, 4, 4, 0.1)
    now, out, reads = 0.2, [], 0
    while b.holding:
        out.extend(b.release(now))
        for read in b.take_reads():
            reads += 1
            out.extend(b.healed(read, [], now, covered=read.upto))
        now = round(now + 0.05, 2)
    assert out == [3, 4] and b.skipped == 1 and list(b.missing) == [(2, 2)]
    assert now >= 1.0 and reads >= 4  # read again every window until the oldest waited 1 s
    assert b.feed(E, 2, 2, now) == [2] and b.late == 1  # a write slower than that: late, once


def test_without_write_timeout_one_read_decides() -> None:
    b = ReorderBuffer[int](0.2, 100)
    b.start(E, 0, 0.0)
    b.feed(E, 1, 1, 0.0)
    b.feed(E, 3, 3, 0.0)
    b.release(0.2)
    (read,) = b.take_reads()
    assert b.healed(read, [(3, 3)], 0.25, covered=3) == [3] and b.skipped == 1


def test_above_limit_a_hole_still_being_written_is_skipped_at_once() -> None:
    b = ReorderBuffer[int](0.2, 2, write_timeout=2.0)
    b.start(E, 0, 0.0)
    b.feed(E, 2, 2, 0.0)
    b.feed(E, 3, 3, 0.0)
    assert b.release(0.2) == []
    (read,) = b.take_reads()
    assert b.healed(read, [(2, 2), (3, 3)], 0.3, covered=3) == []
    assert b.feed(E, 4, 4, 0.3) == [2, 3, 4] and b.skipped == 1  # 3 held > limit 2


@settings(max_examples=300)
@given(st.integers(1, 30), st.data())
def test_writes_landing_within_write_timeout_come_out_in_order_never_late(
    n: int, data: st.DataObject
) -> None:
    """Every offset 1..n is written; each write lands at its own time (under `write_timeout`
    after the allocation of the next ones) and is published when it lands, so publishes
    arrive out of offset order and a hole's first store reads may miss it. Reading the hole
    again until `write_timeout`, the members get every offset once, in order, none late."""
    lands = {
        o: data.draw(st.sampled_from([0.0, 0.1, 0.3, 0.7, 1.2, 1.9]), label=f"land {o}")
        for o in range(1, n + 1)
    }
    b = ReorderBuffer[int](0.2, 1000, write_timeout=2.0)
    b.start(E, 0, 0.0)
    arrivals = sorted(range(1, n + 1), key=lambda o: (lands[o], o))
    out: list[int] = []
    now = 0.0
    step = 0.05
    pending = list(arrivals)
    while pending or b.holding:
        while pending and lands[pending[0]] <= now:
            o = pending.pop(0)
            out.extend(b.feed(E, o, o, now))
        out.extend(b.release(now))
        for read in b.take_reads():
            found = [
                (o, o)
                for o in range(read.after + 1, read.upto + 1)
                if o in lands and lands[o] <= now
            ]
            out.extend(b.healed(read, found, now, read.upto))
        now = round(now + step, 2)
        assert now < 30
    assert out == list(range(1, n + 1))
    assert b.late == 0 and b.skipped == 0

"""ReorderBuffer (sans-IO): a room's positioned messages in offset order, bounded holes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trio_rt._reorder import ReorderBuffer

E = "e1"


def buffer(window: float = 0.2, limit: int = 100) -> ReorderBuffer[int]:
    return ReorderBuffer[int](window, limit)


def test_in_order_messages_come_out_at_once() -> None:
    b = buffer()
    assert [b.feed(E, o, o, now=0.0) for o in (1, 2, 3)] == [[1], [2], [3]]
    assert not b.holding and b.deadline() is None and b.skipped == 0


def test_the_first_message_starts_the_order() -> None:
    b = buffer()
    assert b.feed(E, 41, 41, 0.0) == [41]
    assert b.feed(E, 42, 42, 0.0) == [42]


def test_a_message_behind_a_hole_waits_until_the_hole_fills() -> None:
    b = buffer()
    assert b.feed(E, 1, 1, 0.0) == [1]
    assert b.feed(E, 3, 3, 0.0) == []
    assert b.feed(E, 4, 4, 0.05) == []
    assert b.holding and b.deadline() == 0.2  # the oldest held message's wait
    assert b.feed(E, 2, 2, 0.1) == [2, 3, 4]
    assert not b.holding and b.skipped == 0 and b.late == 0


def test_a_hole_is_skipped_after_the_window() -> None:
    b = buffer()
    b.feed(E, 1, 1, 0.0)
    b.feed(E, 3, 3, 1.0)
    b.feed(E, 5, 5, 1.1)
    assert b.release(1.19) == []
    assert b.release(1.2) == [3]  # 3 waited the window; 5 still waits for 4
    assert b.skipped == 1 and b.deadline() is not None and abs(b.deadline() - 1.3) < 1e-9
    assert b.release(1.3) == [5]
    assert b.skipped == 2 and not b.holding


def test_a_late_message_after_a_skip_is_handed_out_at_once() -> None:
    b = buffer()
    b.feed(E, 1, 1, 0.0)
    b.feed(E, 3, 3, 0.0)
    assert b.release(0.2) == [3]
    assert b.feed(E, 2, 2, 0.3) == [2]  # late: its hole was skipped
    assert b.late == 1 and b.feed(E, 4, 4, 0.3) == [4]


def test_an_epoch_change_hands_out_the_old_epoch_and_starts_over() -> None:
    b = buffer()
    b.feed(E, 1, 1, 0.0)
    b.feed(E, 3, 3, 0.0)
    assert b.feed("e2", 1, 101, 0.1) == [3, 101]  # the old epoch's held ones first
    assert b.epoch == "e2" and b.done == 1 and not b.holding
    assert b.feed(E, 2, 2, 0.1) == [2]  # a straggler of the old epoch: at once, no reset
    assert b.epoch == "e2" and b.feed("e2", 2, 102, 0.1) == [102]


def test_at_most_limit_messages_are_held_then_the_hole_is_skipped() -> None:
    b = buffer(window=60.0, limit=3)
    b.feed(E, 1, 1, 0.0)
    for o in (3, 4, 5):
        assert b.feed(E, o, o, 0.0) == []
    assert b.feed(E, 7, 7, 0.0) == [3, 4, 5]  # the 4th held: the hole at 2 is skipped
    assert b.skipped == 1 and b.is_held(7) and b.done == 5


def test_a_zero_window_never_holds() -> None:
    b = buffer(window=0.0)
    b.feed(E, 1, 1, 0.0)
    assert b.feed(E, 3, 3, 0.0) == [3] and b.skipped == 1


@given(st.permutations(list(range(1, 30))), st.integers(0, 28))
def test_whatever_the_arrival_order_each_message_comes_out_once(
    order: list[int], first_index: int
) -> None:
    """No loss, no repeat; with no timeouts, everything after the first arrival comes out in
    offset order (what arrived below the first one is late: at once)."""
    b = buffer(window=10.0, limit=1000)
    out: list[int] = []
    for o in order:
        out.extend(b.feed(E, o, o, 0.0))
    first = order[0]
    assert sorted(out) == sorted(order[: len(out)])
    assert [o for o in out if o >= first] == list(range(first, 30))
    assert not b.holding
    # With holes timing out in the middle, and a small limit, each still comes out once.
    b = buffer(window=1.0, limit=5)
    out = []
    for i, o in enumerate(order):
        out.extend(b.feed(E, o, o, 5.0 if i >= first_index else 0.0))
    out.extend(b.release(100.0))
    assert sorted(out) == list(range(1, 30))

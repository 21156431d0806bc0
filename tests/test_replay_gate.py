"""ReplayGate (sans-IO): a subscription's replay joined with its live tail, each offset once,
in order, whatever the interleaving."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_rt._replay_gate import ReplayGate


def test_replayed_offsets_past_the_tail_wait_for_it_and_are_not_sent_twice() -> None:
    # The tail is at 10; the replay (since 5) read 6..12 because 11 and 12 were already in
    # the store. The tail then hands out 11, 12 and 13: 11 and 12 must not go out twice.
    gate = ReplayGate[str](after=5, tail_done=10)
    assert gate.replayed([(o, f"r{o}") for o in range(6, 13)]) == ["r6", "r7", "r8", "r9", "r10"]
    assert not gate.open
    assert gate.live(11, "l11") == ["l11"]
    assert gate.live(12, "l12") == ["l12"]
    assert gate.open
    assert gate.live(13, "l13") == ["l13"]


def test_live_items_are_held_while_the_replay_reads_then_merged_in_order() -> None:
    gate = ReplayGate[int](after=0, tail_done=3)
    assert gate.live(4, 4) == []
    assert gate.live(5, None) == []  # does not match the filter: nothing to send
    assert gate.live(6, 6) == []
    assert gate.replayed([(1, 1), (2, None), (3, 3), (4, 4)]) == [1, 3, 4, 6]
    assert gate.open and gate.after == 6


def test_a_hole_the_tail_still_waits_for_goes_out_before_the_replayed_entries_above_it() -> None:
    # A fresh tail started with 7 in flight and 8, 9 already visible (settled: it will pass
    # them without handing them out). The replay has 8 and 9; they wait for 7.
    gate = ReplayGate[int](after=5, tail_done=6)
    assert gate.replayed([(6, 6), (8, 8), (9, 9)]) == [6]
    assert gate.live(7, 7) == [7]
    assert gate.advance(9) == [8, 9]
    assert gate.open


def test_a_failed_replay_sends_the_held_live_items() -> None:
    gate = ReplayGate[int](after=2, tail_done=10)
    gate.live(11, 11)
    gate.live(12, None)
    gate.live(13, 13)
    assert gate.failed(after=10) == [11, 13]
    assert gate.open and gate.live(14, 14) == [14]
    with pytest.raises(RuntimeError):
        gate.replayed([])


def test_a_client_ahead_of_the_tail_gets_nothing_twice() -> None:
    gate = ReplayGate[int](after=20, tail_done=15)
    assert gate.replayed([]) == []
    out = []
    for o in range(16, 21):
        assert not gate.open  # until the tail reaches 20, its items are not this client's
        out += gate.live(o, o)
    assert gate.open
    out += gate.live(21, 21) + gate.live(22, 22)
    assert out == [21, 22]


@settings(max_examples=400, deadline=None)
@given(st.integers(2, 50), st.integers(0, 2**32))
def test_each_offset_once_in_order_whatever_the_interleaving(n: int, seed: int) -> None:
    rnd = random.Random(seed)
    registered = rnd.randint(0, n)  # the tail's position when the subscription registers
    since = rnd.randint(0, n)
    # Entries visible when the tail started, above a hole: it passes them silently.
    settled = {o for o in range(registered + 2, n + 1) if rnd.random() < 0.2}
    matches = {o: rnd.random() < 0.7 for o in range(1, n + 1)}
    # What the tail does from registration on: hand out, pass (settled), or skip each offset.
    events: list[tuple[str, int]] = []
    handed_out: set[int] = set()
    for o in range(registered + 1, n + 1):
        if o in settled or rnd.random() < 0.15:  # passed, or a hole given up on
            if rnd.random() < 0.5:
                events.append(("advance", o))
        else:
            handed_out.add(o)
            events.append(("live", o))
    events.append(("advance", n))
    # The replay reads at event k and ends at event j >= k.
    k = rnd.randint(0, len(events))
    j = rnd.randint(k, len(events))
    live_before_k = {o for kind, o in events[:k] if kind == "live"}
    frontier = max(settled, default=registered)  # the tail's settled_upto at registration
    store: set[int] = set()
    for o in range(since + 1, frontier + 1):
        # The store has what the tail settled before registration, what it passed, and what
        # it handed out before the read; anything else maybe (written, not yet seen by it).
        certain = o <= registered or o in settled or o in live_before_k
        if (certain and rnd.random() < 0.9) or rnd.random() < 0.3:
            store.add(o)

    def item(o: int) -> int | None:
        return o if matches[o] else None

    gate = ReplayGate[int](after=since, tail_done=registered)
    out: list[int] = []
    for index, (kind, o) in enumerate(events):
        if index == j:
            out += gate.replayed([(s, item(s)) for s in sorted(store, key=lambda _: rnd.random())])
        out += gate.live(o, item(o)) if kind == "live" else gate.advance(o)
    if j == len(events):
        out += gate.replayed([(s, item(s)) for s in store])
        out += gate.advance(n)
    assert out == sorted(set(out)), "in order, each once"
    expected = {o for o in handed_out | store if o > since and matches[o]}
    assert set(out) == expected
    assert gate.open

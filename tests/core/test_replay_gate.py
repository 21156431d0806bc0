"""ReplayGate (sans-IO): a subscription's replay joined with its live tail, each offset once,
in order, whatever the interleaving."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_rt._core.reorder import ReorderBuffer
from trio_rt._core.replay_gate import ReplayGate


def test_replayed_offsets_past_the_tail_go_out_in_order_and_are_not_sent_twice() -> None:
    # The tail is at 10; the replay (since 5) read 6..12 because 11 and 12 were already in
    # the store. No hole below them: they go out at once. The tail then hands out 11, 12 and
    # 13: 11 and 12 must not go out twice, and the gate stays until the tail caught up.
    gate = ReplayGate[str](after=5, tail_done=10)
    assert gate.replayed([(o, f"r{o}") for o in range(6, 13)]) == [f"r{o}" for o in range(6, 13)]
    assert not gate.open and gate.after == 12
    assert gate.live(11, "l11") == []
    assert not gate.open
    assert gate.live(12, "l12") == []
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
    assert gate.live(7, 7) == [7, 8, 9]
    assert not gate.open  # until the tail passed 9 (it will not hand 8 and 9 out again)
    assert gate.advance(9) == []
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


# -- behind a room's ReorderBuffer: late offsets, holes the gate waits for and reads ---------------
def test_a_hole_the_upstream_may_still_fill_waits_then_is_read() -> None:
    # The room's buffer is at 4 and skipped 2 (a write in flight): 2 may still come, late.
    room = ReorderBuffer[int](0.2, 100)
    room.start("e", 0, 0.0)
    room.feed("e", 1, 1, 0.0)
    room.skip_to(4, 0.0)  # 2..4 skipped (3 and 4 then arrive late, say)
    gate = ReplayGate[int](0, room.done, tail_pending=room.next_pending, window=0.2, now=0.0)
    assert gate.replayed([(1, 1), (3, 3), (4, 4)], now=1.0) == [1]  # 3, 4 wait for 2
    assert gate.deadline() == 1.2 and not gate.open
    assert gate.release(1.1) == [] and gate.take_reads() == []
    assert gate.release(1.2) == []
    (read,) = gate.take_reads()
    assert (read.after, read.upto) == (1, 4)
    assert gate.healed(read, [(3, 3), (4, 4)], 1.3, covered=4) == [3, 4]  # 2 is skipped
    assert gate.open
    assert gate.live(2, 2, 1.4) == [2]  # late, once
    assert gate.take_counts() == (1, 0)  # 3 and 4 were found, but held already


def test_a_hole_the_upstream_fills_late_goes_out_in_its_place() -> None:
    room = ReorderBuffer[int](0.2, 100)
    room.start("e", 4, 0.0)
    room.reach_back("e", 1)  # a member recovers from 1: 2..4 may still come
    gate = ReplayGate[int](1, room.done, tail_pending=room.next_pending, window=0.2)
    assert gate.replayed([(2, 2), (4, 4)], now=0.0) == [2]
    assert room.feed("e", 3, 3, 0.1) == [3]  # late for the room
    assert gate.live(3, 3, 0.1) == [3, 4]
    assert gate.open


def test_a_hole_the_store_cannot_read_is_reported() -> None:
    room = ReorderBuffer[int](0.2, 100)
    room.start("e", 3, 0.0)
    room.reach_back("e", 0)
    gate = ReplayGate[int](0, room.done, tail_pending=room.next_pending, window=0.2)
    assert gate.replayed([(1, 1), (3, 3)], now=0.0) == [1]
    gate.release(0.3)
    (read,) = gate.take_reads()
    assert gate.unhealed(read, 0.5) == [3]
    assert gate.take_gaps() == [(2, 2)]
    assert gate.open


def test_drain_gives_up_ordering_and_answers_after_it_are_ignored() -> None:
    gate = ReplayGate[int](0, 0, tail_pending=lambda o: o, window=0.2)
    gate.live(3, 3)
    gate.live(2, 2)
    assert gate.drain() == [2, 3] and gate.open and gate.after == 3
    gate = ReplayGate[int](0, 5, tail_pending=lambda o: o, window=0.2)
    assert gate.replayed([(2, 2), (4, 4)], now=0.0) == []
    gate.release(1.0)
    (read,) = gate.take_reads()
    assert gate.drain() == [2, 4] and gate.open
    assert gate.healed(read, [(1, 1)], 1.1, covered=5) == [] and gate.open


class _Room:
    """A room's ReorderBuffer and one member recovering behind a gate, with the deliverer's
    rules (RoomOrdering): the member's floor (`since`), offsets a gate sent from the store
    that the buffer may still hand out (dropped once), the gate dropped once open. Store reads
    are answered at once from what has landed, and what a read missed is recorded."""

    def __init__(self, start: int, window: float) -> None:
        self.buf = ReorderBuffer[int](window, 1000)
        self.buf.start("e", start, 0.0)
        self.window = window
        self.store: set[int] = set()
        self.missed: set[int] = set()  # offsets a (heal) read did not find
        self.gate: ReplayGate[int] | None = None
        self.since: int | None = None
        self.replayed: set[int] = set()
        self.member: list[int] = []
        self.now = 0.0

    def _read(self, after: int, upto: int) -> list[tuple[int, int]]:
        self.missed.update(o for o in range(after + 1, upto + 1) if o not in self.store)
        return [(o, o) for o in range(after + 1, upto + 1) if o in self.store]

    def register(self, since: int) -> None:
        self.since = since
        self.buf.reach_back("e", since)
        self.gate = ReplayGate[int](
            since,
            max(self.buf.done, since),
            tail_pending=self.buf.next_pending,
            window=self.window,
            limit=2000,
            now=self.now,
        )

    def _gate_out(self, out: list[int]) -> None:
        self.replayed.update(o for o in out if self.buf.pending(o))
        self.member.extend(out)
        if self.gate is not None and self.gate.open:
            self.gate = None

    def _deliver(self, out: list[int]) -> None:
        for o in out:
            if self.since is None or o <= self.since:
                continue
            if o in self.replayed:
                self.replayed.discard(o)
                continue
            if self.gate is not None:
                self._gate_out(self.gate.live(o, o, self.now))
            else:
                self.member.append(o)
        if self.gate is not None:
            self._gate_out(self.gate.advance(self.buf.done, self.now))
        self._settle()

    def _settle(self) -> None:
        while True:
            reads = self.buf.take_reads()
            for read in reads:
                found = self._read(read.after, read.upto)
                self._deliver(self.buf.healed(read, found, self.now, read.upto))
            gate_reads = self.gate.take_reads() if self.gate is not None else []
            for read in gate_reads:
                found = self._read(read.after, read.upto)
                if self.gate is not None:
                    self._gate_out(self.gate.healed(read, found, self.now, read.upto))
            if not reads and not gate_reads:
                return

    def arrive(self, o: int) -> None:
        self._deliver(self.buf.feed("e", o, o, self.now))

    def tick(self, dt: float) -> None:
        self.now += dt
        self._deliver(self.buf.release(self.now))
        if self.gate is not None:
            self._gate_out(self.gate.release(self.now))
            self._settle()

    def replay(self, snapshot: list[int]) -> None:
        assert self.gate is not None
        self._gate_out(self.gate.replayed([(o, o) for o in snapshot], self.now))
        self._settle()


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_a_room_recovery_gets_each_offset_once_in_order_unless_a_read_missed_its_write(
    data: st.DataObject,
) -> None:
    """Writes land in any order (some never: refused writes); each landed write is published,
    maybe not (a broker break), maybe twice. A member recovers from `since`: its replay reads
    the store at some point and is merged later. It gets every written offset after `since`
    once, and in offset order, except an offset whose write landed after a store read had
    missed it (late, as for every member)."""
    n = data.draw(st.integers(1, 25), label="n")
    written = sorted(data.draw(st.sets(st.integers(1, n)), label="written"))
    start = data.draw(st.integers(0, n), label="start")
    since = data.draw(st.integers(0, n), label="since")
    window = 1.0
    events: list[tuple[str, int]] = []
    for o in data.draw(st.permutations(written), label="landing order"):
        events.append(("land", o))
        copies = data.draw(st.sampled_from([0, 1, 1, 1, 2]), label="publishes")
        events.extend([("arrive", o)] * copies)
    # Shuffle within the rule that a publish follows its write: insert ticks and the recovery.
    order = data.draw(st.permutations(range(len(events))), label="interleaving")
    landed: set[int] = set()
    sequence: list[tuple[str, int]] = []
    waiting = list(events)
    for _ in order:
        ready = [e for e in waiting if e[0] == "land" or e[1] in landed]
        e = data.draw(st.sampled_from(ready), label="next")
        waiting.remove(e)
        if e[0] == "land":
            landed.add(e[1])
        sequence.append(e)
    for kind in ("tick", "tick", "tick"):
        sequence.insert(data.draw(st.integers(0, len(sequence))), (kind, 0))
    r = data.draw(st.integers(0, len(sequence)), label="register")
    a = data.draw(st.integers(r, len(sequence)), label="read")
    b = data.draw(st.integers(a, len(sequence)), label="merged")
    sequence.insert(b, ("merge", 0))
    sequence.insert(a, ("read", 0))
    sequence.insert(r, ("register", 0))

    room = _Room(start, window)
    snapshot: list[int] = []
    for kind, o in sequence:
        if kind == "land":
            room.store.add(o)
        elif kind == "arrive":
            room.arrive(o)
        elif kind == "tick":
            room.tick(data.draw(st.sampled_from([0.3, 1.5]), label="dt"))
        elif kind == "register":
            room.register(since)
        elif kind == "read":
            snapshot = sorted(o for o in room.store if o > since)
        elif kind == "merge":
            room.replay(snapshot)
    # Every write eventually lands and is published (or read from the store by a re-read),
    # and traffic goes on (a gate waiting on a hole with nothing behind it waits for that).
    written.append(n + 1)
    room.store.update(written)
    for o in written:
        room.arrive(o)
    room.tick(10.0)
    room.tick(10.0)

    expected = [o for o in written if o > since]
    assert sorted(room.member) == expected, "each written offset after since, once"
    top = 0
    for o in room.member:
        if o < top:
            assert o in room.missed, f"{o} out of order after {top} but no read missed it"
        top = max(top, o)
    assert room.gate is None

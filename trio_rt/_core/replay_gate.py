"""ReplayGate: the one recovery gate, a replay joined to a live order, each offset once, in order
(sans-IO).

A recovery (a table subscription with ``since``, a room member rejoining with ``since``) gets
what it missed from the store (the *replay*) while an *upstream* keeps handing out live items
(a table's tail, a room's `ReorderBuffer`). Both can hold the same offsets, and a replay read
sees whatever is in the store when it runs: past where the upstream has got to, and without
an offset whose write is still in flight (a hole). The one rule, for rooms and tables alike:

- the upstream hands out offsets in increasing order, except *late* ones (an offset it had
  given up on and that landed after all). Its position (`tail_done`) is the greatest offset it
  handed out or passed; `tail_pending(offset)` says which offsets at or below it it may still
  hand out late (a table's tail: none; a room's buffer: the ranges it skipped, and what it
  never handed out below a recovery that reaches back before its start);
- while the replay reads, what the upstream hands out is held;
- then replay and live items go out merged in offset order, from `after` (the recovery's
  ``since``) on, each offset once: an offset goes out when every offset below it went out,
  or will not come (at or below the upstream's position and not pending there);
- a hole the upstream is still waiting for (above its position) waits for the upstream;
- a hole at or below it that the upstream may still fill late waits `window` seconds (from
  the oldest item held behind it), then is read from the store (`take_reads`, answered with
  `healed`/`unhealed`): what the store has goes out in place, what it lacks is skipped as a
  range (and still goes out, late, if the upstream hands it out after all); a range the store
  could not be read for is reported (`take_gaps`). This is `ReorderBuffer`'s rule, behind an
  upstream (`_core/reorder.py`): the gate is a `ReorderBuffer` with a ceiling;
- if the replay fails (recovery not possible), the held live items go out (`failed`, `drain`)
  and the gate opens.

The gate is `open` once the replay is merged, nothing waits in it and it caught up with the
upstream's position: from there the upstream's items can go out directly (the gate is
dropped). Items are opaque (`T`); `None` stands for an offset that does not match a
subscription's filter: it moves the gate on but sends nothing. `tests/core/test_replay_gate.py`
checks the rule with property tests over random interleavings, for a tail and for a room.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from .reorder import ReorderBuffer, StoreRead

__all__ = ["ReplayGate"]

T = TypeVar("T")

_EPOCH = ""  # a gate serves one epoch: its core never sees another
UNBOUNDED = 1 << 62  # default `limit`: without pending holes nothing is ever skipped for it


class ReplayGate(Generic[T]):
    """Merges a replay with an upstream for one recovery (the module docstring has the rule).

    `after` is the recovery's start (its ``since`` offset): nothing at or below it goes out.
    `tail_done` is the upstream's position when the recovery was registered. `tail_pending`
    (None: nothing at or below the upstream's position will come) is the upstream's
    ``next_pending``: the smallest offset >= its argument that it may still hand out.
    `window` and `limit` bound the wait for such a hole as in `ReorderBuffer`. Every method
    returns the items to send now, in order; `now` (any monotonic clock, seconds) only matters
    with `tail_pending`.
    """

    def __init__(
        self,
        after: int,
        tail_done: int,
        *,
        tail_pending: Callable[[int], int] | None = None,
        window: float = 0.0,
        limit: int = UNBOUNDED,
        now: float = 0.0,
    ) -> None:
        core = self._core = ReorderBuffer[T | None](window, limit)
        core.start(_EPOCH, after, now)
        core.ceiling = tail_done
        core.upstream = tail_pending
        self.replaying = True
        self._held: list[tuple[int, T | None]] = []  # live, while the replay reads
        self._reads = 0  # store reads handed out and not answered yet
        self._drained = False

    # -- state ----------------------------------------------------------------------------------
    @property
    def after(self) -> int:
        """Every offset <= after went out (or is not this recovery's, or was skipped)."""
        return self._core.done

    @after.setter
    def after(self, value: int) -> None:
        """Move the start (only while the replay reads: nothing went out yet)."""
        if not self.replaying:
            raise RuntimeError("the start can only move while the replay reads")
        self._core.done = value

    @property
    def tail_done(self) -> int:
        ceiling = self._core.ceiling
        assert ceiling is not None
        return ceiling

    @property
    def open(self) -> bool:
        """True once the replay is merged, nothing waits in the gate (no item, no store read)
        and it is exactly at the upstream's position: no hole below it, and nothing the
        upstream hands out next went out already (the replay or a client coming back ahead of
        it may have gone further). From here on the upstream's items can go out directly (the
        gate can be dropped)."""
        core = self._core
        return (
            not self.replaying
            and not core.holding
            and self._reads == 0
            and not core.wants_reads
            and not core.reading
            and core.done == self.tail_done  # no hole below, and the upstream repeats nothing
        )

    def take_counts(self) -> tuple[int, int]:
        """(late, filled) since the last call: items that went out below the order (a hole
        this gate skipped, filled after), and items found by its store reads."""
        core = self._core
        counts = (core.late, core.filled)
        core.late = core.filled = 0
        return counts

    def deadline(self) -> float | None:
        """When `release` must next be called (None: not needed)."""
        return None if self.replaying else self._core.deadline()

    @property
    def wants_reads(self) -> bool:
        return self._core.wants_reads

    def take_reads(self) -> list[StoreRead]:
        """The store reads wanted: offsets (after, upto] (answer with `healed`/`unhealed`)."""
        reads = self._core.take_reads()
        self._reads += len(reads)
        return reads

    def take_gaps(self) -> list[tuple[int, int]]:
        """Ranges skipped because the store could not be read (first, last)."""
        return self._core.take_gaps()

    # -- input ------------------------------------------------------------------------------------
    def live(self, offset: int, item: T | None, now: float = 0.0) -> list[T]:
        """The upstream hands out `offset` (`item`, or None if it does not match)."""
        core = self._core
        if core.ceiling is None or offset > core.ceiling:
            core.ceiling = offset
        if self.replaying:
            self._held.append((offset, item))
            return []
        out = core.feed(_EPOCH, offset, item, now)
        out.extend(core.release(now))
        return _items(out)

    def advance(self, tail_done: int, now: float = 0.0) -> list[T]:
        """The upstream's position moved to `tail_done` (offsets passed or holes skipped)."""
        core = self._core
        if core.ceiling is None or tail_done > core.ceiling:
            core.ceiling = tail_done
        return self.release(now)

    def release(self, now: float) -> list[T]:
        """What can go now (a hole's wait is over: its read is wanted)."""
        if self.replaying:
            return []
        return _items(self._core.release(now))

    def replayed(self, items: Iterable[tuple[int, T | None]], now: float = 0.0) -> list[T]:
        """The replay's items (any order); the replay is over. Returns what can go now: the
        replayed and held items in offset order, up to the first hole that must wait."""
        if not self.replaying:
            raise RuntimeError("the replay is already over")
        self.replaying = False
        core = self._core
        ceiling = self.tail_done
        core.ceiling = core.done  # nothing is passed before every item is in
        out: list[T | None] = []
        for offset, item in sorted(items, key=lambda pair: pair[0]):
            if offset > core.done:
                out.extend(core.feed(_EPOCH, offset, item, now))
        held, self._held = self._held, []
        for offset, item in held:  # the same offset replayed and live: the same item, once
            out.extend(core.feed(_EPOCH, offset, item, now))
        core.ceiling = ceiling
        out.extend(core.release(now))
        return _items(out)

    def failed(self, after: int, now: float = 0.0) -> list[T]:
        """The replay did not happen: the recovery starts at `after` (the upstream's position
        when it was registered) instead. Returns the held live items above it."""
        self.replaying = False
        core = self._core
        ceiling = self.tail_done
        core.done = core.ceiling = after  # nothing is passed before every item is in
        core.missing.clear()
        out: list[T | None] = []
        held, self._held = self._held, []
        for offset, item in held:
            if offset > after:
                out.extend(core.feed(_EPOCH, offset, item, now))
        core.ceiling = ceiling
        out.extend(core.release(now))
        return _items(out)

    def drain(self) -> list[T]:
        """Give up ordering (the stream's epoch changed, or the replay failed): every item
        held (live while the replay reads, or waiting behind a hole) above `after`, in offset
        order, each once. The gate is open afterwards, to be dropped (the upstream's items go
        out directly from then on), and answers to its reads are ignored."""
        core = self._core
        if self.replaying:  # the live items held while the replay reads (the core is empty)
            held = {o: i for o, i in self._held if o > core.done}
            out = [held[o] for o in sorted(held)]
            core.done = max(core.done, max(held, default=core.done))
            self._held = []
            self.replaying = False
        else:
            out = core.flush()
        self._reads = 0
        self._drained = True
        core.ceiling = core.done  # open: to be dropped
        return _items(out)

    def healed(
        self, read: StoreRead, entries: Iterable[tuple[int, T | None]], now: float, covered: int
    ) -> list[T]:
        """The answer to `read` (see `ReorderBuffer.healed`)."""
        if self._drained:
            return []
        self._reads -= 1
        return _items(self._core.healed(read, entries, now, covered))

    def unhealed(self, read: StoreRead, now: float) -> list[T]:
        """The store could not answer `read`: its holes are skipped, and reported
        (`take_gaps`)."""
        if self._drained:
            return []
        self._reads -= 1
        return _items(self._core.unhealed(read, now))


def _items(out: list[T | None]) -> list[T]:
    return [item for item in out if item is not None]

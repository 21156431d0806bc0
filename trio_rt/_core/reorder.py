"""ReorderBuffer: a room's positioned messages handed out in offset order, each once, sans-IO.

Servers publish a room's messages in the order their publishes land, not always in offset
order: server A allocates offset 5, server B offset 6, and B's publish reaches the broker
first. A server can also miss a message altogether (its broker subscription broke while the
message was published), or see one twice (a store read overlapping the broker). Each server
feeds what the broker delivers for a room with history into one `ReorderBuffer` and hands its
local members what comes out:

- **start**: the buffer starts at the position its first local member joined at (`start`):
  offsets at or below it are the past, not handed out. Until `start` is called what arrives
  waits; if the start never comes (the sequencer could not be read) the buffer starts itself
  after `window`, just below the first offset it saw;
- **in order**: the next offset comes out at once (no added latency in the common case),
  followed by the held messages it unblocks;
- **holes are healed**: a message behind a missing offset (a *hole*) is held until the hole
  fills or until the oldest held message has waited `window` seconds. Then the buffer asks
  for a store read of the missing offsets (`take_reads`, answered with `healed`): what the
  store has comes out in order, and what it does not have (never written: a refused write,
  or the sequencer's reseed gap) is skipped as whole ranges at once. With a `write_timeout`
  longer than `window`, an offset the store does not have *yet* may still be being written (a
  slow store write: its message was allocated before the held one): the buffer reads the store
  again every `window` and skips the hole only once the oldest held message has waited
  `write_timeout` (what the store has meanwhile comes out in order). Only when the store
  cannot answer (`unhealed`) is a hole skipped unread; those ranges are reported
  (`take_gaps`) so that the members can be told;
- **bounded**: with more than `limit` messages held, the hole below them is skipped at once
  and read afterwards (what the read finds comes out late); `window == 0` does that for
  every hole (arrival order, holes read afterwards);
- **late, never twice**: an offset at or below `done` comes out only if it was skipped and
  never handed out (*late*: counted in `late`); an offset already handed out, or from before
  the start, is a *duplicate* and dropped (counted in `duplicates`). The skipped-and-never-
  handed-out offsets are kept as ranges, at most `max_gaps` of them: with more, the lowest
  range is forgotten (its offsets then count as duplicates);
- **epochs**: a message of another epoch starts a new order from that epoch's offset 1 (the
  stream's history was reset), after the held messages of the old epoch come out. Stragglers
  of the epoch before are handed out at once, without dedupe.

**Behind an upstream** (`ceiling`, `upstream`): the same rule serves a recovery gate
(`ReplayGate`, `_core/replay_gate.py`), which merges a replay with what an upstream order (a room's
buffer, a table's tail) hands out. There the buffer owns only the holes at or below the
upstream's position (`ceiling`) that the upstream may still fill late (`upstream(offset)`: the
smallest offset >= offset it may still hand out): those wait `window`, then are read, as above.
An offset at or below the ceiling that the upstream will not hand out is passed at once (it
went out before, or never will); a hole above the ceiling is the upstream's own: the buffer
waits for the upstream to fill it or move past it, without a deadline of its own.

`tests/core/test_reorder.py` checks it without sockets (unit and property tests).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from .checks import require_positive_ints

__all__ = ["OffsetRanges", "ReorderBuffer", "StoreRead"]

T = TypeVar("T")

MAX_GAPS = 64  # skipped ranges remembered per room (late delivery, dedupe)


@dataclass(frozen=True, slots=True)
class StoreRead:
    """A store read a buffer needs: the entries of `epoch` with offsets in (`after`, `upto`].

    `blocking`: the buffer waits for the answer before it moves past the hole (a heal);
    otherwise the range was skipped already and what is found comes out late.
    """

    epoch: str
    after: int
    upto: int
    blocking: bool


class OffsetRanges:
    """A set of offsets kept as sorted, disjoint, inclusive ranges; at most `bound` ranges
    (adding one more forgets the lowest)."""

    __slots__ = ("_highs", "_lows", "bound")

    def __init__(self, bound: int = MAX_GAPS) -> None:
        require_positive_ints(bound=bound)
        self.bound = bound
        self._lows: list[int] = []
        self._highs: list[int] = []

    def __bool__(self) -> bool:
        return bool(self._lows)

    def __len__(self) -> int:
        """The number of ranges (not of offsets)."""
        return len(self._lows)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._lows, self._highs, strict=True))

    def __contains__(self, offset: object) -> bool:
        if not isinstance(offset, int):
            return False
        i = bisect.bisect_right(self._lows, offset) - 1
        return i >= 0 and offset <= self._highs[i]

    def lowest(self) -> int | None:
        return self._lows[0] if self._lows else None

    def next_from(self, offset: int) -> int | None:
        """The smallest offset in the set that is >= `offset` (None: there is none)."""
        i = bisect.bisect_right(self._lows, offset) - 1
        if i >= 0 and offset <= self._highs[i]:
            return offset
        i += 1
        return self._lows[i] if i < len(self._lows) else None

    def add(self, low: int, high: int) -> None:
        """Add the offsets low..high (inclusive), merging touching ranges."""
        if low > high:
            return
        lows, highs = self._lows, self._highs
        i = bisect.bisect_left(highs, low - 1)  # the first range that ends at or after low-1
        j = bisect.bisect_right(lows, high + 1)  # ranges from i to j-1 touch low..high
        if i < j:
            low = min(low, lows[i])
            high = max(high, highs[j - 1])
        lows[i:j] = [low]
        highs[i:j] = [high]
        while len(lows) > self.bound:
            del lows[0], highs[0]

    def discard(self, offset: int) -> None:
        i = bisect.bisect_right(self._lows, offset) - 1
        if i < 0 or offset > self._highs[i]:
            return
        low, high = self._lows[i], self._highs[i]
        pieces = [(a, b) for a, b in ((low, offset - 1), (offset + 1, high)) if a <= b]
        self._lows[i : i + 1] = [a for a, _ in pieces]
        self._highs[i : i + 1] = [b for _, b in pieces]

    def clear(self) -> None:
        self._lows.clear()
        self._highs.clear()


class ReorderBuffer(Generic[T]):
    """In-order, exactly-once hand-out of one stream's items by offset, with bounded, healed
    holes (the module docstring has the rules).

    `start`, `feed`, `release`, `healed` and `unhealed` return the items to deliver now, in
    the order to deliver them. `deadline()` is when `release` must next be called (None: not
    needed). After any call, `take_reads()` lists the store reads wanted (answer each with
    `healed` or `unhealed`) and `take_gaps()` the ranges skipped without the store's answer.
    `now` is any monotonic clock in seconds.

    Behind an upstream (the module docstring): `ceiling` is the upstream's position (every
    offset up to it was handed out by the upstream, or is one it may still hand out late), and
    `upstream(offset)` the smallest offset >= `offset` the upstream may still hand out (None:
    nothing at or below the ceiling will come). Both None: no upstream (a room's own buffer).
    """

    def __init__(
        self,
        window: float,
        limit: int,
        *,
        max_gaps: int = MAX_GAPS,
        write_timeout: float | None = None,
    ) -> None:
        self.window = window
        self.limit = limit
        # How long a hole may still be being written (None: `window`, one read decides).
        self.write_timeout = window if write_timeout is None else max(window, write_timeout)
        self.started = False
        self.epoch: str | None = None
        self.done = 0  # every offset <= done was handed out, skipped, or before the start
        self.missing = OffsetRanges(max_gaps)  # <= done, skipped and never handed out
        self.skipped = 0  # offsets passed without handing them out
        self.late = 0  # items handed out below `done` (their offset had been skipped)
        self.duplicates = 0  # items dropped: handed out already, or before the start
        self.filled = 0  # items found by store reads
        self._held: dict[int, tuple[T, float]] = {}  # offset -> (item, arrival); arrival order
        self._early: list[tuple[str, int, T, float]] = []  # what came before `start`
        self._reach = 0  # offsets (reach, start] were never handed out (see reach_back)
        self._reach_wanted: dict[str, int] = {}  # reach_back asked before the start
        self._previous_epoch: str | None = None
        self._wanted: list[StoreRead] = []  # reads to hand to the caller
        self._blocking: StoreRead | None = None  # the heal the buffer waits for
        self._gaps: list[tuple[int, int]] = []  # skipped without the store's answer
        self.ceiling: int | None = None  # behind an upstream: its position
        self.upstream: Callable[[int], int] | None = None  # its next offset that may come
        # (done, when): the hole above `done` was read and may still be being written: the
        # next read is not before `when` (`write_timeout`).
        self._retry: tuple[int, float] | None = None

    # -- state ----------------------------------------------------------------------------------
    @property
    def holding(self) -> bool:
        return bool(self._held) or bool(self._early)

    @property
    def reading(self) -> bool:
        """True while the buffer waits for a heal (`healed`/`unhealed`)."""
        return self._blocking is not None

    def is_held(self, offset: int) -> bool:
        return offset in self._held

    def pending(self, offset: int) -> bool:
        """True if `offset` (of the current epoch) may still be handed out."""
        return not self.started or offset > self.done or offset in self.missing

    def next_pending(self, offset: int) -> int:
        """The smallest offset >= `offset` (of the current epoch) that may still be handed
        out: an upstream for a buffer behind it."""
        if not self.started or offset > self.done:
            return offset
        low = self.missing.next_from(offset)
        return self.done + 1 if low is None else low

    def deadline(self) -> float | None:
        """When the oldest waiting item has waited `window` (None: nothing to time out)."""
        if not self.started:
            return self._early[0][3] + self.window if self._early else None
        if self._blocking is not None:
            return None  # the heal's answer moves on, not the clock
        if self.ceiling is not None and self.done >= self.ceiling:
            return None  # the next offset is the upstream's to hand out (or to give up on)
        for _, arrival in self._held.values():  # dicts keep insertion (= arrival) order
            retry = self._retry
            if retry is not None and retry[0] == self.done:
                return max(arrival + self.window, retry[1])
            return arrival + self.window
        return None

    @property
    def wants_reads(self) -> bool:
        return bool(self._wanted)

    @property
    def has_gaps(self) -> bool:
        return bool(self._gaps)

    def take_reads(self) -> list[StoreRead]:
        reads, self._wanted = self._wanted, []
        return reads

    def take_gaps(self) -> list[tuple[int, int]]:
        gaps, self._gaps = self._gaps, []
        return gaps

    # -- input ------------------------------------------------------------------------------------
    def start(self, epoch: str, done: int, now: float) -> list[T]:
        """Start at `done` in `epoch` (offsets <= done are the past). Once; later calls do
        nothing. What arrived before is fed again, in arrival order."""
        if self.started:
            return []
        self.started = True
        self.epoch = epoch
        self.done = self._reach = done
        after = self._reach_wanted.pop(epoch, None)
        self._reach_wanted.clear()
        if after is not None:
            self.reach_back(epoch, after)
        out: list[T] = []
        early, self._early = self._early, []
        for e, offset, item, arrival in early:
            out.extend(self._feed(e, offset, item, arrival))
        out.extend(self.release(now))
        return out

    def reach_back(self, epoch: str, after: int) -> None:
        """A member needs the offsets after `after`: those from before the start that were
        never handed out may still come out (late) when they arrive."""
        if not self.started:
            if after < self._reach_wanted.get(epoch, after + 1):
                self._reach_wanted[epoch] = after
            return
        if epoch != self.epoch or after >= self._reach:
            return
        self.missing.add(after + 1, self._reach)
        self._reach = after

    def feed(self, epoch: str, offset: int, item: T, now: float) -> list[T]:
        if not self.started:
            self._early.append((epoch, offset, item, now))
            if len(self._early) > self.limit or self.window <= 0:
                return self.release(now)
            return []
        return self._feed(epoch, offset, item, now)

    def _feed(self, epoch: str, offset: int, item: T, now: float) -> list[T]:
        out: list[T] = []
        if epoch != self.epoch:
            if epoch == self._previous_epoch:
                self.late += 1  # a straggler of the epoch we already left
                return [item]
            out = self._drain()
            self._previous_epoch, self.epoch = self.epoch, epoch
            # A new epoch begins at offset 1, after every member joined: all of it is due
            # (what came before this message is a hole, healed like any other).
            self.done = self._reach = 0
            self.missing.clear()
        if offset <= self.done:
            if offset in self.missing:
                self.missing.discard(offset)
                self.late += 1
                out.append(item)
            else:
                self.duplicates += 1
            return out
        if offset in self._held:
            self.duplicates += 1
            return out
        if offset == self.done + 1 and not self._held:  # the common case: nothing to wait for
            self.done = offset
            out.append(item)
            return out
        self._held[offset] = (item, now)
        out.extend(self.release(now))
        return out

    def release(self, now: float) -> list[T]:
        """Items that can go now: the run after `done`, and past holes whose wait is over."""
        if not self.started:
            if not self._early:
                return []
            if len(self._early) <= self.limit and now < self._early[0][3] + self.window:
                return []
            # No start came in time: the first offset seen starts the order.
            epoch = self._early[0][0]
            first = min(o for e, o, _, _ in self._early if e == epoch)
            return self.start(epoch, first - 1, now)
        out: list[T] = []
        held = self._held
        ceiling = self.ceiling
        while True:
            out.extend(self._release_run())
            nxt = self.done + 1
            if ceiling is not None:
                if nxt > ceiling:
                    break  # the upstream's hole: it fills it or moves past it
                top = min(min(held) - 1, ceiling) if held else ceiling
                upstream = self.upstream
                coming = upstream(nxt) if upstream is not None else top + 1
                if coming > nxt:  # nxt.. will not come from the upstream: passed at once
                    self.done = min(coming - 1, top)
                    continue
                # nxt may still come (late) from the upstream: a hole of this buffer's
            if not held:
                break
            first = min(held)
            high = first - 1 if ceiling is None else min(first - 1, ceiling)
            if len(held) > self.limit or self.window <= 0:
                # Skip now, read afterwards (unless a heal already covers the range).
                blocking = self._blocking
                if blocking is None or blocking.upto < high:
                    assert self.epoch is not None
                    self._wanted.append(StoreRead(self.epoch, nxt - 1, high, False))
                self._skip(nxt, high)
                continue
            if self._blocking is not None:
                break  # waiting for the heal's answer
            deadline = self.deadline()
            assert deadline is not None
            if now < deadline:
                break
            assert self.epoch is not None
            upto = max(held) if ceiling is None else min(max(held), ceiling)
            self._blocking = StoreRead(self.epoch, self.done, upto, True)
            self._wanted.append(self._blocking)
            break
        return out

    def healed(
        self, read: StoreRead, entries: Iterable[tuple[int, T]], now: float, covered: int
    ) -> list[T]:
        """The answer to `read`: the `entries` (offset, item) the store has in
        (read.after, covered], `covered` <= read.upto (a store answers a bounded page). Holes
        up to `covered` that the store does not have are skipped as ranges."""
        if read is self._blocking:
            self._blocking = None
        if read.epoch != self.epoch:
            return []
        out: list[T] = []
        for offset, item in sorted(entries, key=lambda e: e[0]):
            if offset <= read.after or offset > covered:
                continue
            if offset <= self.done:
                if offset in self.missing:
                    self.missing.discard(offset)
                    self.late += 1
                    self.filled += 1
                    out.append(item)
                else:
                    self.duplicates += 1
            elif offset not in self._held:
                self._held[offset] = (item, now)
                self.filled += 1
            else:
                self.duplicates += 1
        if read.blocking:
            out.extend(self._release_run())
            if self._still_writing(now) and len(self._held) <= self.limit:
                # A hole the store does not have yet: read again after `window`.
                self._retry = (self.done, now + self.window)
            else:
                out.extend(self._settle(min(covered, read.upto)))
        out.extend(self.release(now))
        return out

    def _still_writing(self, now: float) -> bool:
        """True while a hole's offsets may still be being written: something is held behind
        it and the oldest held message has waited less than `write_timeout`."""
        if self.write_timeout <= self.window:
            return False
        for _, arrival in self._held.values():  # the oldest first
            return now < arrival + self.write_timeout
        return False

    def _release_run(self) -> list[T]:
        """The held items right after `done`, in order (no hole crossed)."""
        out: list[T] = []
        held = self._held
        while (entry := held.pop(self.done + 1, None)) is not None:
            out.append(entry[0])
            self.done += 1
        return out

    def unhealed(self, read: StoreRead, now: float) -> list[T]:
        """The store could not answer `read`: its holes are skipped unread, and every range
        of it still missing is reported (`take_gaps`)."""
        if read is self._blocking:
            self._blocking = None
        if read.epoch != self.epoch:
            return []
        out: list[T] = []
        if read.blocking:
            out.extend(self._settle(read.upto))
        for low, high in self.missing:
            if high > read.after and low <= read.upto:
                self._gaps.append((max(low, read.after + 1), min(high, read.upto)))
        out.extend(self.release(now))
        return out

    def skip_to(self, upto: int, now: float) -> list[T]:
        """Give up on every offset up to `upto` that has not come (held ones come out first,
        in order); the skipped ones may still come out late."""
        if not self.started:
            return []
        out = self._settle(upto)
        out.extend(self.release(now))
        return out

    def flush(self) -> list[T]:
        """Give up waiting: every held item at once, in offset order (`done` moves to the
        greatest; the holes below it are not recorded). Wanted reads are dropped and the
        awaited heal is forgotten (its answer finds nothing held)."""
        top = max(self._held, default=self.done)
        items = self._drain()
        self.done = max(self.done, top)
        return items

    # -- internals ------------------------------------------------------------------------------
    def _settle(self, upto: int) -> list[T]:
        """Move `done` to `upto`: held items come out in order, holes are skipped as ranges."""
        out: list[T] = []
        held = self._held
        while self.done < upto:
            nxt = self.done + 1
            entry = held.pop(nxt, None)
            if entry is not None:
                out.append(entry[0])
                self.done = nxt
                continue
            high = min(min(held) - 1, upto) if held else upto
            self._skip(nxt, high)
        return out

    def _skip(self, low: int, high: int) -> None:
        self.skipped += high - low + 1
        self.missing.add(low, high)
        self.done = high

    def _drain(self) -> list[T]:
        """Everything held, in offset order (the epoch ends)."""
        items = [self._held[o][0] for o in sorted(self._held)]
        self._held.clear()
        self._wanted.clear()
        self._blocking = None
        return items

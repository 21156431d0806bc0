"""ReplayGate: one subscription's switch from replay to live, each offset once, in order (sans-IO).

A table subscription with ``since`` gets what it missed from the store (the *replay*) and then
what the table's live tail hands out. Both can hold the same offsets: the tail keeps handing out
changes while the replay reads, and a replay read sees whatever is in the store when it runs,
which may be past where the tail has got to. The one rule:

- the tail hands out offsets in increasing order; when it hands out offset `o`, or says its
  position is `o`, every offset up to `o` is settled for it (handed out, skipped, or entries
  that existed when it started, which it passes without handing out);
- while the replay reads, what the tail hands out is held;
- a replayed offset goes out once the tail's position has reached it (so a hole below it that
  the tail is still waiting for goes out first), merged with the held and later live items in
  offset order; an offset already out is never sent again (replayed and live copies of the
  same offset: one goes out);
- if the replay fails (recovery not possible), the held live items go out and the gate opens.

Items are opaque (`T`); `None` stands for an offset that does not match the subscription's
filter: it moves the gate on but sends nothing. `tests/test_replay_gate.py` checks the rule with
a property test over random interleavings.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

__all__ = ["ReplayGate"]

T = TypeVar("T")


class ReplayGate(Generic[T]):
    """Merges a replay with a live tail for one subscription.

    `after` is the subscription's start (its ``since`` offset): nothing at or below it goes
    out. `tail_done` is the live tail's position when the subscription was registered. Every
    method returns the items to send now, in order.
    """

    def __init__(self, after: int, tail_done: int) -> None:
        self.after = after  # every offset <= after is out (or not this subscription's)
        self.tail_done = tail_done  # the live tail has settled every offset <= tail_done
        self.replaying = True
        self._held: list[tuple[int, T | None]] = []  # live, while the replay reads
        self._replayed: dict[int, T | None] = {}  # replayed, above the tail's position

    @property
    def open(self) -> bool:
        """True once the replay is merged, nothing replayed waits for the tail, and the tail
        has caught up with the start (a client may come back ahead of this server's tail):
        from here on the tail's items can go out directly (the gate can be dropped)."""
        return not self.replaying and not self._replayed and self.tail_done >= self.after

    def live(self, offset: int, item: T | None) -> list[T]:
        """The tail hands out `offset` (`item`, or None if it does not match)."""
        self.tail_done = max(self.tail_done, offset)
        if self.replaying:
            self._held.append((offset, item))
            return []
        out = self._release(offset - 1)
        if offset > self.after:
            self._replayed.pop(offset, None)  # the same offset, replayed: once
            self.after = offset
            if item is not None:
                out.append(item)
        return out

    def advance(self, tail_done: int) -> list[T]:
        """The tail's position moved to `tail_done` (entries passed or holes skipped)."""
        self.tail_done = max(self.tail_done, tail_done)
        if self.replaying:
            return []
        return self._release(self.tail_done)

    def replayed(self, items: Iterable[tuple[int, T | None]]) -> list[T]:
        """The replay's items (any order); the replay is over. Returns what can go now: the
        replayed and held items up to the tail's position, in offset order."""
        if not self.replaying:
            raise RuntimeError("the replay is already over")
        self.replaying = False
        for offset, item in items:
            if offset > self.after:
                self._replayed[offset] = item
        held, self._held = self._held, []
        for offset, item in held:  # a live copy wins over a replayed one: same change
            if offset > self.after:
                self._replayed[offset] = item
        return self._release(self.tail_done)

    def failed(self, after: int) -> list[T]:
        """The replay did not happen: the subscription starts at `after` (the tail's position
        when it was registered) instead. Returns the held live items above it."""
        self.replaying = False
        self._replayed.clear()
        self.after = after
        held, self._held = self._held, []
        out: list[T] = []
        for offset, item in held:
            if offset > self.after:
                self.after = offset
                if item is not None:
                    out.append(item)
        return out

    def _release(self, upto: int) -> list[T]:
        out: list[T] = []
        if self._replayed:
            for offset in sorted(o for o in self._replayed if o <= upto):
                item = self._replayed.pop(offset)
                if offset > self.after and item is not None:
                    out.append(item)
        self.after = max(self.after, upto)
        return out

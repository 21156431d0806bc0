"""ReorderBuffer: a room's positioned messages handed out in offset order, sans-IO.

Servers publish a room's messages in the order their publishes land, not always in offset
order: server A allocates offset 5, server B offset 6, and B's publish reaches the broker
first. Each server feeds what the broker delivers for a room with history into one
`ReorderBuffer` and hands its local members what comes out:

- a message with the next offset comes out at once (no added latency in the common case),
  followed by the held messages it unblocks;
- a message behind a missing offset (a *hole*) is held until the hole fills, or until the
  oldest held message has waited `window` seconds, or until more than `limit` are held: then
  the hole is skipped (counted in `skipped`), never a message (policy: *skip the hole*);
- a message at or below what was already handed out (it arrives after its hole was skipped)
  comes out at once, out of order: clients keep the greatest position they saw;
- the first message starts the order (a server that joins late does not wait for the past);
  a message of another epoch starts a new order there (the stream's history was reset), after
  the held messages of the old epoch come out. Stragglers of the epoch before are handed out at
  once without resetting again.

`tests/test_reorder.py` checks it without sockets (with a property test).
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["ReorderBuffer"]

T = TypeVar("T")


class ReorderBuffer(Generic[T]):
    """In-order hand-out of one stream's items by offset, with a bounded wait for holes.

    `feed(epoch, offset, item, now)` and `release(now)` return the items to deliver now, in
    the order to deliver them. `deadline()` is when `release` must next be called (None:
    nothing is held). `now` is any monotonic clock in seconds.
    """

    def __init__(self, window: float, limit: int) -> None:
        self.window = window
        self.limit = limit
        self.epoch: str | None = None
        self.done = 0  # every offset <= done was handed out or skipped (in `epoch`)
        self.skipped = 0  # offsets given up on (window passed, or the limit was reached)
        self.late = 0  # items handed out after a greater offset (their hole had been skipped)
        self._held: dict[int, tuple[T, float]] = {}  # offset -> (item, arrival); arrival order
        self._previous_epoch: str | None = None

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def is_held(self, offset: int) -> bool:
        return offset in self._held

    def deadline(self) -> float | None:
        """When the oldest held item has waited `window` (None when nothing is held)."""
        for _, arrival in self._held.values():  # dicts keep insertion (= arrival) order
            return arrival + self.window
        return None

    def feed(self, epoch: str, offset: int, item: T, now: float) -> list[T]:
        out: list[T] = []
        if epoch != self.epoch:
            if self.epoch is not None and epoch == self._previous_epoch:
                self.late += 1  # a straggler of the epoch we already left
                return [item]
            out = self._drain()
            self._previous_epoch, self.epoch, self.done = self.epoch, epoch, offset - 1
        if offset == self.done + 1 and not self._held:  # the common case: nothing to wait for
            self.done = offset
            out.append(item)
            return out
        if offset <= self.done or offset in self._held:
            self.late += 1
            out.append(item)
            return out
        self._held[offset] = (item, now)
        out.extend(self.release(now))
        return out

    def release(self, now: float) -> list[T]:
        """Items that can go now: the run after `done`, and past any hole that timed out."""
        out: list[T] = []
        held = self._held
        while held:
            nxt = self.done + 1
            entry = held.pop(nxt, None)
            if entry is not None:
                out.append(entry[0])
                self.done = nxt
                continue
            deadline = self.deadline()
            assert deadline is not None
            if len(held) <= self.limit and now < deadline:
                break
            first = min(held)  # skip the hole below the first held item
            self.skipped += first - nxt
            self.done = first - 1
        return out

    def _drain(self) -> list[T]:
        """Everything held, in offset order (the epoch ends)."""
        items = [self._held[o][0] for o in sorted(self._held)]
        self._held.clear()
        return items

"""The server's heartbeat schedule: whom to ping now, whose pong is late. Sans-IO.

One schedule per server replaces a sleeping task (and its cancel scope and timer) per
connection: at 10,000 connections that was about 4 KiB and a dozen GC-tracked objects each
(docs/performance.md). The caller supplies the clock and does the I/O: it sends a ping for
every beat `poll` returns in `pings`, and closes the connections returned in `timeouts`.

Semantics, for every registered item:

* a ping every `interval` seconds, the first `interval` after `add` (fixed rate: the next ping
  is due `interval` after this one was sent, not after its pong came back);
* a ping whose pong has not come back within `timeout` seconds times the item out (it is
  returned once in `timeouts` and forgotten);
* while a ping is unanswered (possible when `timeout > interval`), no new ping is sent: the
  next due time checks again.

Both queues are FIFOs: every entry is pushed at the current time plus a constant (`interval`
or `timeout`), and the clock never goes back, so each deque stays sorted without a heap.
Removed beats are dropped lazily when their entries come up.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

from .checks import require_positive_numbers

__all__ = ["Beat", "HeartbeatSchedule"]

T = TypeVar("T")


class Beat(Generic[T]):
    """One item's heartbeat state. `payload` is the unanswered ping's payload, or None."""

    __slots__ = ("deadline", "item", "payload")

    def __init__(self, item: T) -> None:
        self.item: T | None = item  # None once removed
        self.payload: bytes | None = None
        self.deadline = 0.0  # when the unanswered ping times out


class HeartbeatSchedule(Generic[T]):
    """Ping due times and pong deadlines for many items (see the module docstring)."""

    __slots__ = ("_counter", "_deadlines", "_due", "interval", "timeout")

    def __init__(self, interval: float, timeout: float) -> None:
        require_positive_numbers(interval=interval, timeout=timeout)
        self.interval = interval
        self.timeout = timeout
        self._due: deque[tuple[float, Beat[T]]] = deque()
        self._deadlines: deque[tuple[float, Beat[T]]] = deque()
        self._counter = 0

    def __len__(self) -> int:
        """Entries queued (including those of removed beats not dropped yet)."""
        return len(self._due) + len(self._deadlines)

    def add(self, item: T, now: float) -> Beat[T]:
        """Start the heartbeat of `item`: its first ping is due at `now + interval`."""
        beat = Beat(item)
        self._due.append((now + self.interval, beat))
        return beat

    @staticmethod
    def remove(beat: Beat[T]) -> None:
        """Stop the heartbeat of `beat` (idempotent). Its queued entries are dropped lazily."""
        beat.item = None
        beat.payload = None

    @staticmethod
    def pong(beat: Beat[T], payload: bytes) -> bool:
        """Record a pong. True when it answers the unanswered ping (other pongs are ignored)."""
        if beat.payload is not None and payload == beat.payload:
            beat.payload = None
            return True
        return False

    def next_time(self) -> float | None:
        """When `poll` next has something to do, or None when nothing is scheduled."""
        due, deadlines = self._due, self._deadlines
        while due and due[0][1].item is None:
            due.popleft()
        while deadlines and _stale(*deadlines[0]):
            deadlines.popleft()
        if due and deadlines:
            return min(due[0][0], deadlines[0][0])
        if due:
            return due[0][0]
        if deadlines:
            return deadlines[0][0]
        return None

    def poll(self, now: float) -> tuple[list[Beat[T]], list[T]]:
        """Advance to `now`: the beats to ping now (each has its new `payload` set) and the
        items whose ping went unanswered for `timeout` (their beats are removed)."""
        timeouts: list[T] = []
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            when, beat = deadlines.popleft()
            if not _stale(when, beat):
                assert beat.item is not None
                timeouts.append(beat.item)
                self.remove(beat)
        pings: list[Beat[T]] = []
        due = self._due
        while due and due[0][0] <= now:
            _, beat = due.popleft()
            if beat.item is None:
                continue
            if beat.payload is None:
                self._counter = (self._counter + 1) & 0xFFFFFFFF
                beat.payload = self._counter.to_bytes(4, "big")
                beat.deadline = now + self.timeout
                deadlines.append((beat.deadline, beat))
                pings.append(beat)
            due.append((now + self.interval, beat))
        return pings, timeouts


def _stale(when: float, beat: Beat[T]) -> bool:
    """A deadline entry that no longer matters: removed, answered, or not the latest ping's."""
    return beat.item is None or beat.payload is None or beat.deadline != when

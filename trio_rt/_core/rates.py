"""SlidingWindowRate: events per second over a sliding window (sans-IO: it never reads a
clock; the caller passes the time). `WebSocketMetrics` (`_engine/metrics.py`) feeds two of
them with the server's message counters."""

from __future__ import annotations

import math

from .checks import require_positive_ints

__all__ = ["SlidingWindowRate"]


class SlidingWindowRate:
    """Events per second over the last `window` seconds, at one-second resolution.

    Feed it a counter's running total with `observe_total(total, now)` (the first call sets
    the baseline: what happened before is not counted; a total that goes down is a counter
    reset and counts from zero), or increments with `add(count, now)`. `rate(now)` divides the
    events of the buckets still in the window by the time they cover (at most `window`, at
    least one second, never more than the time since the first observation). `now` is any
    monotonic clock in seconds; the class never reads a clock itself.
    """

    def __init__(self, window: int = 10) -> None:
        require_positive_ints(window=window)  # whole seconds
        self.window = window
        self._seconds: list[int | None] = [None] * window
        self._counts: list[int] = [0] * window
        self._last_total: int | None = None
        self._started: float | None = None

    def observe_total(self, total: int, now: float) -> None:
        if self._last_total is None:
            self._last_total = total
            if self._started is None:
                self._started = now
            return
        delta = total - self._last_total
        self._last_total = total
        self.add(total if delta < 0 else delta, now)

    def add(self, count: int, now: float) -> None:
        if self._started is None:
            self._started = now
        if count <= 0:
            return
        second = math.floor(now)
        i = second % self.window
        if self._seconds[i] != second:
            self._seconds[i] = second
            self._counts[i] = 0
        self._counts[i] += count

    def total(self, now: float) -> int:
        """Events in the buckets still inside the window at `now`."""
        current = math.floor(now)
        oldest = current - self.window + 1
        return sum(
            c
            for s, c in zip(self._seconds, self._counts, strict=True)
            if s is not None and oldest <= s <= current
        )

    def rate(self, now: float) -> float:
        if self._started is None:
            return 0.0
        covered = (self.window - 1) + (now - math.floor(now))  # oldest bucket's start to now
        span = max(1.0, min(covered, now - self._started))
        return self.total(now) / span

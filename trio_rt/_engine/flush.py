"""FlushQueue: when a send is corked, and the task that flushes what connections corked.

The engine's half of direct writes (the socket's half, which holds the corked bytes, is
`_transport/direct_stream.py`, reached through `DirectWrites` in `_engine/sockets.py`).
"""

from __future__ import annotations

import math
from typing import Generic, Protocol, TypeVar

import trio

__all__ = ["FlushQueue", "Flushable"]

F = TypeVar("F", bound="Flushable")


class Flushable(Protocol):
    def flush_corked(self) -> None: ...


class FlushQueue(Generic[F]):
    """Decides when sends are corked, and flushes the connections that corked frames.

    Quiet: a send or a fan-out writes at once (`begin` returns False). If it came less than
    `QUIET` seconds after the one before, a burst may be starting: it opens a *window* (an
    isolated send does not: no task wakes up for it). Any send or fan-out while the window is
    open is corked (`DirectStream.cork`) and the connection `add`-ed here. The `run` task
    lets the scheduler make `PASSES` more passes, then calls each added connection's
    ``flush_corked()`` in order: every frame corked meanwhile goes out in one write per
    connection. If it flushed something, a burst is under way: the window stays open and the
    cycle repeats, each cycle twice as many passes as the one before, up to `MAX_PASSES`, and
    ending at the first pass that ends past `MAX_DELAY` seconds; otherwise it closes (and the
    next window starts at `PASSES` again). So an isolated message costs no extra latency nor
    a task switch, and under load each connection gets one system call per cycle instead of
    one per message: a sustained burst about `MAX_PASSES` fan-outs per write, about
    `MAX_DELAY` at most later than the first was ready (docs/performance.md). The clock is
    Trio's (`trio.current_time`).

    `begin` and `add` are sync and never wait. The queue is bounded by the number of
    connections: a connection is added only when its first frame is corked, and every flush
    empties the queue. `run` lives in the manager's nursery; once it is cancelled `running` is
    False and nothing is corked any more (what was corked is written then).
    """

    PASSES = 2  # scheduler passes the first window lasts: more batches more, and delays more
    # A burst's cycles grow to this many passes: a system call per connection costs several
    # fan-outs' worth of Python (a write per 2 fan-outs: ~2.4 µs of CPU per delivery in the
    # table's burst; per 16: ~0.9, docs/performance.md), and a burst's frames then wait a
    # few milliseconds at most. Bounded in time too: in a busy server a pass can be long.
    MAX_PASSES = 16
    MAX_DELAY = 0.005  # seconds a grown cycle may last
    # Sends further apart than this are isolated: a window costs a task's cycle (a wake-up
    # and PASSES scheduler passes, ~2-4 % of a paced fan-out's CPU at 200 broadcasts/s) and
    # would cork nothing; closer ones open a window, as the second send of a burst does.
    QUIET = 0.001

    def __init__(self) -> None:
        self._items: list[F] = []
        self._lot = trio.lowlevel.ParkingLot()
        self._open = False
        self._last = -math.inf  # trio.current_time() of the last send written at once
        self.running = False

    def begin(self) -> bool:
        """Call once per send or fan-out, before it. True: cork its frames (and `add` the
        connections that had nothing corked yet); False: write them now."""
        if self._open:
            return True
        if self.running:
            now = trio.current_time()
            if now - self._last < self.QUIET:
                self._open = True
                self._lot.unpark()
            self._last = now
        return False

    def add(self, item: F) -> None:
        self._items.append(item)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.running = True
        task_status.started()
        passes = self.PASSES
        try:
            while True:
                if not self._open:
                    await self._lot.park()
                    passes = self.PASSES
                if passes <= self.PASSES:  # the first window: no clock to read
                    for _ in range(passes):
                        await trio.lowlevel.checkpoint()
                else:
                    deadline = trio.current_time() + self.MAX_DELAY
                    for _ in range(passes):
                        await trio.lowlevel.checkpoint()
                        if trio.current_time() >= deadline:
                            break
                if self._items:
                    self._flush_all()
                    passes = min(2 * passes, self.MAX_PASSES)  # a burst: batch more
                else:
                    self._open = False
        finally:
            self.running = False
            self._open = False
            self._flush_all()

    def _flush_all(self) -> None:
        # A function of its own: no local keeps a closed connection alive while run() waits.
        items, self._items = self._items, []
        for item in items:
            item.flush_corked()

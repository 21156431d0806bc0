"""FlushQueue: when a send is corked, and the task that flushes what connections corked.

The engine's half of direct writes (the socket's half, which holds the corked bytes, is
`_transport/direct_stream.py`, reached through `DirectWrites` in `_engine/sockets.py`).
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

import trio

__all__ = ["FlushQueue", "Flushable"]

F = TypeVar("F", bound="Flushable")


class Flushable(Protocol):
    def flush_corked(self) -> None: ...


class FlushQueue(Generic[F]):
    """Decides when sends are corked, and flushes the connections that corked frames.

    Quiet: a send or a fan-out writes at once (`begin` returns False) and opens a *window*.
    Any send or fan-out while the window is open is corked (`DirectStream.cork`) and the
    connection `add`-ed here. The `run` task lets the scheduler make `PASSES` more passes,
    then calls each added connection's ``flush_corked()`` in order: every frame corked
    meanwhile goes out in one write per connection. If it flushed something, a burst is under
    way: the window stays open and the cycle repeats; otherwise it closes. So an isolated
    message costs no extra latency, and under load each connection gets one system call per
    cycle instead of one per message (docs/performance.md).

    `begin` and `add` are sync and never wait. The queue is bounded by the number of
    connections: a connection is added only when its first frame is corked, and every flush
    empties the queue. `run` lives in the manager's nursery; once it is cancelled `running` is
    False and nothing is corked any more (what was corked is written then).
    """

    PASSES = 2  # scheduler passes a window lasts: more batches more, and delays more

    def __init__(self) -> None:
        self._items: list[F] = []
        self._lot = trio.lowlevel.ParkingLot()
        self._open = False
        self.running = False

    def begin(self) -> bool:
        """Call once per send or fan-out, before it. True: cork its frames (and `add` the
        connections that had nothing corked yet); False: write them now."""
        if self._open:
            return True
        if self.running:
            self._open = True
            self._lot.unpark()
        return False

    def add(self, item: F) -> None:
        self._items.append(item)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.running = True
        task_status.started()
        try:
            while True:
                if not self._open:
                    await self._lot.park()
                for _ in range(self.PASSES):
                    await trio.lowlevel.checkpoint()
                if self._items:
                    self._flush_all()
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

"""RoomOrdering: the rooms with history on one server, their messages in offset order.

The rule itself is `ReorderBuffer` (sans-IO, `_reorder.py`); this keeps one buffer per room
with local members, one `Timers` task for every room's hole deadline (no task per room), and
what a recovery replayed while a buffer still held it (docs/streams.md, "Offset order on every
server").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import trio

from ._envelope import Envelope
from ._protocol import StreamPosition
from ._reorder import ReorderBuffer
from ._timers import Timers

__all__ = ["RoomOrdering"]


class _Counters(Protocol):
    reorder_skipped: int
    reorder_late: int


class RoomOrdering:
    """Positioned room messages from the broker, handed to ``deliver(room, envelopes)`` in
    offset order (sync, must not wait).

    `feed` creates a room's buffer on first use; `drop` forgets it (the room's last local
    member left). `note_replayed` records, after a recovery, the offsets it replayed that a
    buffer still holds: `replayed` maps room -> connection id -> those offsets, for the
    deliverer to skip once. `run` is the one task (the manager's nursery) that skips the holes
    whose window passed; cancelled with it. Skipped and late messages are added to `counters`.
    """

    def __init__(self, deliver: Callable[[str, list[Envelope]], None], counters: _Counters) -> None:
        self.buffers: dict[str, ReorderBuffer[Envelope]] = {}
        self.timers = Timers[str]()  # room -> when its oldest held message gives up
        self.replayed: dict[str, dict[str, set[int]]] = {}
        self._deliver = deliver
        self._counters = counters

    def has(self, room: str) -> bool:
        return room in self.buffers

    def feed(self, room: str, env: Envelope, window: float, limit: int) -> None:
        """A positioned message of `room` (``env.offset`` set) as the broker delivered it."""
        assert env.offset is not None
        buf = self.buffers.get(room)
        if buf is None:
            buf = self.buffers[room] = ReorderBuffer[Envelope](window, limit)
        self._step(room, buf, buf.feed(env.epoch or "", env.offset, env, trio.current_time()))

    def drop(self, room: str) -> None:
        if self.buffers.pop(room, None) is not None:
            self.timers.cancel(room)
            self.replayed.pop(room, None)

    def note_replayed(self, room: str, conn_id: str, positions: Iterable[StreamPosition]) -> None:
        """A recovery sent `positions` to `conn_id` from the store: those the room's buffer
        still holds must not reach that connection again when the buffer lets them go."""
        buf = self.buffers.get(room)
        if buf is None or not buf.holding:
            return
        again = {p.offset for p in positions if p.epoch == buf.epoch and buf.is_held(p.offset)}
        if again:
            self.replayed.setdefault(room, {})[conn_id] = again

    async def run(self) -> None:
        await self.timers.run(self._due)

    def _due(self, room: str) -> None:
        buf = self.buffers.get(room)
        if buf is not None:
            self._step(room, buf, buf.release(trio.current_time()))

    def _step(self, room: str, buf: ReorderBuffer[Envelope], ready: list[Envelope]) -> None:
        """Deliver what `buf` let go, count what it skipped, schedule its next deadline."""
        if buf.skipped or buf.late:  # moved into the server's counters
            self._counters.reorder_skipped += buf.skipped
            self._counters.reorder_late += buf.late
            buf.skipped = buf.late = 0
        if ready:
            self._deliver(room, ready)
        deadline = buf.deadline()
        if deadline is None:  # nothing held
            self.replayed.pop(room, None)
            self.timers.cancel(room)
        else:
            self.timers.set(room, deadline)

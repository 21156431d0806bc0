"""The reading side of change streams: cursors over the stream store, tails, wake-ups.

`ChangeReader` tails a table's stream for whoever hands it a `deliver` callback (the
watchers of `changes.py`, the live tails of `change_subscriptions.py`): it polls the store
every `poll_interval`, is woken at once by `wake` (this process's writes, other processes'
nudges), holds what waits behind a hole until it fills or `hole_timeout` passes
(`StreamCursor`), and retries a failed read with a growing pause: a tail outlives a
Cassandra outage. Counters go to the `stats` dict it is given (the manager's).

Entries this process stored are handed over in memory (`remember`, with their wake-up): a
tail whose next positions up to the announced offset are all remembered takes them from
there instead of reading them back. Anything it cannot take whole from memory (another
process's entries, an entry stored before a restart, a remembered run with a gap, a memory
evicted by newer entries) is read from the store as before, so the cursor's order, holes
and hole timeout are the same either way.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from .._core.protocol import StreamPosition
from .change_capture import ChangeEvent
from .streams import Sequencer, StreamCursor, StreamEntry

if TYPE_CHECKING:
    from ..cassandra._streams import CassandraStreamStore

__all__ = ["RETRY_MAX", "ChangeReader", "change_event"]

log = logging.getLogger("trio_rt.changes")

RETRY_MAX = 5.0  # seconds between attempts at most, while the store fails
REMEMBERED = 1024  # stored entries kept in memory per stream (the newest; older: read back)


def change_event(table: str, entry: StreamEntry) -> ChangeEvent:
    """A stream entry of `table` as the `ChangeEvent` watchers get."""
    body = json.loads(entry.payload)
    return ChangeEvent(table, body["operation"], body["key"], body["data"], entry.position)


class ChangeReader:
    """Reads the change streams of `store` for one server (see the module docstring).

    `lag` is the seconds between the write and the hand-out of the latest change (0 when
    the tails are idle). Tasks: none of its own; `tail` runs in the caller's task until
    cancelled."""

    def __init__(
        self,
        store: CassandraStreamStore,
        sequencer: Sequencer,
        stats: dict[str, int],
        *,
        poll_interval: float,
        hole_timeout: float,
        batch_size: int,
        start_window: int,
    ) -> None:
        self.store = store
        self.sequencer = sequencer
        self.stats = stats
        self.poll_interval = poll_interval
        self.hole_timeout = hole_timeout
        self.batch_size = batch_size
        self.start_window = start_window
        self.lag = 0.0
        self._wakeups: dict[str, trio.Event] = {}
        # Per stream: a counter bumped by every nudge (a tail that was busy reading when one
        # came does not miss it), and the greatest offset a nudge announced.
        self._generation: dict[str, int] = {}
        self._announced: dict[str, int] = {}
        # Per stream: entries this process stored and a tail has yet to pass, by offset
        # (insertion order = age); the cursors of the running tails, to know which.
        self._remembered: dict[str, dict[int, StreamEntry]] = {}
        self._cursors: dict[str, list[list[StreamCursor]]] = {}

    def remember(self, stream: str, entries: list[StreamEntry]) -> None:
        """`entries` of `stream` are stored (confirmed by the store): tails may take them
        from memory instead of reading them back. Then wakes the tails up to the greatest.
        Kept only while a tail of the stream has yet to pass them, at most REMEMBERED per
        stream (the newest)."""
        if not entries:
            return
        tails = self._cursors.get(stream)
        if tails:  # nobody tails the stream: nothing to keep
            passed = min(holder[0].done for holder in tails)
            kept = self._remembered.setdefault(stream, {})
            for entry in entries:
                if entry.position.offset > passed:
                    kept[entry.position.offset] = entry
            for offset in [o for o in kept if o <= passed]:
                del kept[offset]
            while len(kept) > REMEMBERED:  # a tail that is stuck: it reads the store later
                del kept[next(iter(kept))]
        self.wake(stream, max(e.position.offset for e in entries))

    def _from_memory(
        self, stream: str, cursor: StreamCursor, upto: int
    ) -> list[StreamEntry] | None:
        """The entries after `cursor.done` up to `upto` (at most batch_size), if this
        process stored every one of them in the cursor's epoch; else None (read the store)."""
        kept = self._remembered.get(stream)
        if not kept:
            return None
        out = []
        for offset in range(cursor.done + 1, min(upto, cursor.done + self.batch_size) + 1):
            entry = kept.get(offset)
            if entry is None or entry.position.epoch != cursor.epoch:
                return None
            out.append(entry)
        return out

    def wake(self, stream: str, offset: int) -> None:
        """A write up to `offset` of `stream` committed (here, or elsewhere: a nudge): its
        tails read now instead of at their next poll."""
        self._generation[stream] = self._generation.get(stream, 0) + 1
        if offset > self._announced.get(stream, 0):
            self._announced[stream] = offset
        event = self._wakeups.pop(stream, None)
        if event is not None:
            event.set()

    async def _wait(self, stream: str, generation: int, seconds: float) -> None:
        """Until a nudge newer than `generation`, or `seconds`."""
        if self._generation.get(stream, 0) != generation:
            await trio.lowlevel.checkpoint()
            return
        event = self._wakeups.get(stream)
        if event is None:
            event = self._wakeups[stream] = trio.Event()
        with trio.move_on_after(seconds):
            await event.wait()

    async def retrying(self, what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """``await fn()`` until it succeeds: a store that fails (Cassandra unreachable) is
        retried with a growing pause (up to RETRY_MAX), each failure logged and counted."""
        pause = min(self.poll_interval, 0.1)
        while True:
            try:
                return await fn()
            except Exception as exc:
                self.stats["read_errors"] += 1
                log.warning("%s failed (%r); retrying in %.1f s", what, exc, pause)
            await trio.sleep(pause)
            pause = min(pause * 2, RETRY_MAX)

    async def start_cursor(self, stream: str, resume: StreamPosition | None) -> StreamCursor:
        """A cursor at `resume`, or after everything visible now (holes below still count)."""
        return await self.retrying(  # type: ignore[no-any-return]
            f"starting to read {stream}", lambda: self._open_cursor(stream, resume)
        )

    async def _open_cursor(self, stream: str, resume: StreamPosition | None) -> StreamCursor:
        head = await self.store.head(stream)
        if resume is not None and (head is None or head.position.epoch == resume.epoch):
            epoch = resume.epoch if head is None else head.position.epoch
            return StreamCursor(epoch, resume.offset, self.hole_timeout)
        if resume is not None and head is not None:
            log.warning(
                "stream %s changed epoch (%s -> %s): starting over",
                stream,
                resume.epoch,
                head.position.epoch,
            )
            return StreamCursor(head.position.epoch, 0, self.hole_timeout)
        if head is None:
            current = await self.sequencer.current(stream)
            return StreamCursor(current.epoch, current.offset, self.hole_timeout)
        top = head.position.offset
        low = max(0, top - self.start_window)
        cursor = StreamCursor(head.position.epoch, low, self.hole_timeout)
        seen = await self.store.read(stream, cursor.epoch, low, self.start_window)
        # A hole below an entry written long ago is at least that old: it is timed from the
        # entry's write time, so an old gap (a failed write, a reseed) does not hold the tail
        # for another hole_timeout after every start.
        now, wall = trio.current_time(), time.time()
        cursor.settle_existing(
            (e.position.offset for e in seen),
            {e.position.offset: now - max(0.0, wall - e.timestamp / 1e6) for e in seen},
        )
        cursor.feed([], now)  # pass what is settled up to the first open hole
        if cursor.skipped:
            self.stats["skipped_holes"] += cursor.skipped
            log.warning(
                "stream %s: %d old position(s) never written, skipped", stream, cursor.skipped
            )
        return cursor

    async def tail(
        self,
        stream: str,
        cursor: StreamCursor,
        deliver: Callable[[list[StreamEntry], StreamCursor], Awaitable[None]],
        on_reset: Callable[[StreamCursor], None],
    ) -> None:
        """Read `stream` from `cursor` until cancelled; ``await deliver(entries, cursor)`` each
        time entries come out or the cursor's position moves (a hole skipped, settled entries
        passed). `on_reset` gets the new cursor when the stream's epoch changes."""
        holder = [cursor]  # what `remember` looks at (the cursor changes on a reset)
        self._cursors.setdefault(stream, []).append(holder)
        try:
            await self._tail(stream, holder, deliver, on_reset)
        finally:
            tails = self._cursors[stream]
            tails.remove(holder)
            if not tails:
                del self._cursors[stream]
                self._remembered.pop(stream, None)

    async def _tail(
        self,
        stream: str,
        holder: list[StreamCursor],
        deliver: Callable[[list[StreamEntry], StreamCursor], Awaitable[None]],
        on_reset: Callable[[StreamCursor], None],
    ) -> None:
        cursor = holder[0]
        pause = 0.0  # after a failed read: wait before the next attempt
        while True:
            generation = self._generation.get(stream, 0)
            upto = self._announced.get(stream, 0)
            try:
                if upto <= cursor.done:
                    # A poll, not a nudge: the head says how far to read, and whether the
                    # stream was reset (a new epoch); nothing past `done`, no read at all.
                    head = await self.store.head(stream)
                    upto = head.position.offset if head is not None else 0
                    if head is not None and head.position.epoch != cursor.epoch:
                        log.warning("stream %s changed epoch: starting over", stream)
                        cursor = holder[0] = StreamCursor(head.position.epoch, 0, self.hole_timeout)
                        self._announced.pop(stream, None)
                        on_reset(cursor)
                entries = []
                if upto > cursor.done:
                    remembered = self._from_memory(stream, cursor, upto)
                    if remembered is not None:
                        self.stats["from_memory"] += len(remembered)
                        entries = remembered
                    else:
                        entries = await self.store.read(
                            stream, cursor.epoch, cursor.done, self.batch_size, upto=upto
                        )
            except Exception as exc:
                self.stats["read_errors"] += 1
                pause = min(max(pause * 2, 0.1), RETRY_MAX)
                log.warning("stream %s: read failed (%r); again in %.1f s", stream, exc, pause)
                await trio.sleep(pause)
                continue
            pause = 0.0
            skipped, done = cursor.skipped, cursor.done
            ready = cursor.feed(entries, trio.current_time())
            if cursor.skipped != skipped:
                self.stats["skipped_holes"] += cursor.skipped - skipped
                log.warning(
                    "stream %s: %d position(s) never written within %.1f s, skipped",
                    stream,
                    cursor.skipped - skipped,
                    self.hole_timeout,
                )
            if ready:
                self.stats["changes"] += len(ready)
                self.lag = max(0.0, time.time() - ready[-1].timestamp / 1e6)
            elif not entries:
                self.lag = 0.0
            if cursor.done != done:
                await deliver(ready, cursor)
            if len(entries) >= self.batch_size and ready:
                continue
            timeout = self.poll_interval
            deadline = cursor.next_hole_deadline()
            if cursor.holding:
                # Something waits behind a hole: look again soon, not only when nudged.
                timeout = min(timeout, 0.05)
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline - trio.current_time()))
            await self._wait(stream, generation, timeout)

"""Streams: positions (offset + epoch), sequencers, stream stores, and the tail cursor.

A *stream* is an ordered log with a name: ``room:<name>`` for the messages of a room with
history, ``table:<name>`` for the changes of a table. Every entry has a position: an `offset`
(1, 2, 3, ... within the epoch) and an `epoch` (a string naming one generation of the stream;
when a stream's history is lost the epoch changes, and positions of another epoch mean nothing).

- A `Sequencer` hands out positions, and a write timestamp that grows with the offset, so that
  Cassandra's last-write-wins order and offset order agree whatever the writers' clocks say.
  `MemorySequencer` serves one process; `RedisSequencer` (trio_rt.redis) a cluster.
- A `StreamStore` keeps entries for a retention period and answers "what came after offset X".
  `MemoryStreamStore` here; `CassandraStreamStore` in trio_rt.cassandra.
- `StreamCursor` (sans-IO) turns repeated reads of a store into an in-order, exactly-once
  sequence even when writes commit out of offset order (a slow batch leaves a *hole* that is
  filled later: entries behind it are held until it is, or until `hole_timeout`).

Nothing here does network I/O; the memory implementations only yield to the scheduler.
"""

from __future__ import annotations

import abc
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import trio

from .._core.checks import int_problem, number_problem, require
from .._core.protocol import StreamPosition, parse_position

__all__ = [
    "Allocation",
    "MemorySequencer",
    "MemoryStreamStore",
    "Recovery",
    "Sequencer",
    "StreamCursor",
    "StreamEntry",
    "StreamPosition",
    "StreamStore",
    "new_epoch",
    "parse_position",
    "recover",
]


def new_epoch() -> str:
    """A fresh epoch: 8 random hex characters."""
    return secrets.token_hex(4)


@dataclass(frozen=True, slots=True)
class Allocation:
    """A position handed out by a sequencer, with the write timestamp (microseconds) to use."""

    position: StreamPosition
    timestamp: int


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One stored entry. `payload` is JSON text (a room message, or a change event)."""

    position: StreamPosition
    timestamp: int
    payload: str


# -- stores -----------------------------------------------------------------------------------
class StreamStore(abc.ABC):
    """Keeps stream entries for a retention period.

    Contract (``test_store_contract`` in tests/engine/test_change_streams.py runs it against every
    implementation):

    - ``append(stream, allocation, payload)`` stores one entry at the allocated position.
    - ``read(stream, epoch, after, limit, upto=None)`` returns up to `limit` entries of
      `epoch` with offsets greater than `after` that are visible now, in offset order. An entry
      may become visible after entries with greater offsets (concurrent writers): readers
      re-read. `upto` is a hint (an offset known to exist, from a nudge): a store may read up
      to it without first looking up the head; entries beyond it may be left out.
    - ``latest(stream, epoch, limit, before=None)`` returns the `limit` entries with the
      greatest offsets (below `before` when given), in offset order.
    - ``contains(stream, position)`` is True while that entry is retained.
    - ``head(stream)`` returns the allocation of the greatest offset written, or None.
    """

    @abc.abstractmethod
    async def append(self, stream: str, allocation: Allocation, payload: str) -> None: ...

    @abc.abstractmethod
    async def read(
        self, stream: str, epoch: str, after: int, limit: int, *, upto: int | None = None
    ) -> list[StreamEntry]: ...

    @abc.abstractmethod
    async def latest(
        self, stream: str, epoch: str, limit: int, before: int | None = None
    ) -> list[StreamEntry]: ...

    @abc.abstractmethod
    async def contains(self, stream: str, position: StreamPosition) -> bool: ...

    @abc.abstractmethod
    async def head(self, stream: str) -> Allocation | None: ...


class MemoryStreamStore(StreamStore):
    """Entries in process memory: the last `max_entries` per stream, for `retention` seconds.

    For one process (the demo, tests): a restart loses everything, so a `MemorySequencer`
    starts new epochs and clients are told that recovery is not possible.
    """

    def __init__(self, *, max_entries: int = 1000, retention: float = 3600.0) -> None:
        require(int_problem("max_entries", max_entries), number_problem("retention", retention))
        self.max_entries = max_entries
        self.retention = float(retention)
        self._streams: dict[str, deque[StreamEntry]] = {}
        self._heads: dict[str, Allocation] = {}

    def _entries(self, stream: str) -> deque[StreamEntry]:
        entries = self._streams.get(stream)
        if entries is None:
            return deque()
        horizon = time.time_ns() // 1000 - int(self.retention * 1e6)
        while entries and entries[0].timestamp < horizon:
            entries.popleft()
        return entries

    async def append(self, stream: str, allocation: Allocation, payload: str) -> None:
        entries = self._streams.get(stream)
        if entries is None:
            entries = self._streams[stream] = deque(maxlen=self.max_entries)
        entry = StreamEntry(allocation.position, allocation.timestamp, payload)
        # Keep offset order even if appends arrive out of order (concurrent writers).
        if entries and entries[-1].position.offset > allocation.position.offset:
            items = sorted([*entries, entry], key=lambda e: e.position.offset)
            entries.clear()
            entries.extend(items[-self.max_entries :])
        else:
            entries.append(entry)
        head = self._heads.get(stream)
        if head is None or head.position.offset < allocation.position.offset:
            self._heads[stream] = allocation
        await trio.lowlevel.checkpoint()

    async def read(
        self, stream: str, epoch: str, after: int, limit: int, *, upto: int | None = None
    ) -> list[StreamEntry]:
        out = [
            e
            for e in self._entries(stream)
            if e.position.epoch == epoch and e.position.offset > after
        ][:limit]
        await trio.lowlevel.checkpoint()
        return out

    async def latest(
        self, stream: str, epoch: str, limit: int, before: int | None = None
    ) -> list[StreamEntry]:
        out = [
            e
            for e in self._entries(stream)
            if e.position.epoch == epoch and (before is None or e.position.offset < before)
        ]
        await trio.lowlevel.checkpoint()
        return out[-limit:] if limit > 0 else []

    async def contains(self, stream: str, position: StreamPosition) -> bool:
        found = any(e.position == position for e in self._entries(stream))
        await trio.lowlevel.checkpoint()
        return found

    async def head(self, stream: str) -> Allocation | None:
        await trio.lowlevel.checkpoint()
        return self._heads.get(stream)


# -- sequencers -------------------------------------------------------------------------------
class Sequencer(abc.ABC):
    """Hands out stream positions.

    Contract: within one epoch, offsets start after the store's head and grow by one per
    `next`; timestamps grow strictly with offsets. `current` is the last position handed out
    (offset 0 before the first). A sequencer that lost its state (a restart, a Redis flush)
    continues from the store's head when it can, and starts a new epoch when it cannot.
    """

    store: StreamStore | None = None

    def attach(self, store: StreamStore) -> None:
        """Continue the streams of `store` (called by the components that own both)."""
        self.store = store

    @abc.abstractmethod
    async def next(self, stream: str) -> Allocation: ...

    @abc.abstractmethod
    async def current(self, stream: str) -> StreamPosition: ...


@dataclass
class _Counter:
    epoch: str
    offset: int
    timestamp: int


class MemorySequencer(Sequencer):
    """Positions from process memory: correct for one writing process only.

    With several server processes, use `RedisSequencer`: two memory sequencers would hand out
    the same offsets.
    """

    def __init__(self, *, clock: Callable[[], int] = time.time_ns) -> None:
        self._clock = clock  # nanoseconds; injectable for tests of skewed clocks
        self._counters: dict[str, _Counter] = {}
        self._seeding: dict[str, trio.Event] = {}

    async def _counter(self, stream: str) -> _Counter:
        counter = self._counters.get(stream)
        if counter is not None:
            return counter
        pending = self._seeding.get(stream)
        if pending is not None:
            await pending.wait()
            return self._counters[stream]
        done = self._seeding[stream] = trio.Event()
        try:
            head = await self.store.head(stream) if self.store is not None else None
            if head is None:
                counter = _Counter(new_epoch(), 0, 0)
            else:
                counter = _Counter(head.position.epoch, head.position.offset, head.timestamp)
            self._counters[stream] = counter
            return counter
        finally:
            done.set()
            del self._seeding[stream]

    async def next(self, stream: str) -> Allocation:
        counter = await self._counter(stream)
        counter.offset += 1
        counter.timestamp = max(self._clock() // 1000, counter.timestamp + 1)
        return Allocation(StreamPosition(counter.offset, counter.epoch), counter.timestamp)

    async def current(self, stream: str) -> StreamPosition:
        counter = await self._counter(stream)
        return StreamPosition(counter.offset, counter.epoch)


def warn_memory_behind_broker(
    log: logging.Logger,
    owner: str,
    broker: object,
    sequencer: Sequencer,
    store: StreamStore | None,
    remedy: str,
) -> None:
    """Logs a warning on `log` when `broker` spans processes (`Broker.spans_processes`, like
    ``RedisBroker``) while `owner` numbers its streams with a memory sequencer or keeps them in
    a memory store: every process would hand out its own positions. `remedy` names what to use
    instead."""
    if not getattr(broker, "spans_processes", False):
        return
    if isinstance(sequencer, MemorySequencer):
        part = "sequencer"
    elif isinstance(store, MemoryStreamStore):
        part = "store"
    else:
        return
    log.warning(
        "%s with a memory %s while the broker spans processes: positions are per process "
        "(two writing processes would hand out the same ones); use %s (docs/streams.md)",
        owner,
        part,
        remedy,
    )


# -- recovery ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Recovery:
    """The answer to "what did I miss since `since`": entries, or why recovery is not possible
    (`reason`: ``epoch_changed``, ``retention`` or ``too_many``)."""

    entries: list[StreamEntry]
    position: StreamPosition
    reason: str | None = None

    @property
    def recovered(self) -> bool:
        return self.reason is None


async def recover(
    store: StreamStore,
    stream: str,
    since: StreamPosition,
    current: StreamPosition,
    *,
    limit: int,
) -> Recovery:
    """Entries of `stream` after `since`, given the stream's `current` position.

    Not possible when the epoch changed (``epoch_changed``), when more than `limit` entries
    were missed (``too_many``), or when entries after `since` may have expired
    (``retention``). `since` need not have been written (a refused write, the sequencer's
    reseed gap, or a ``room_joined`` position that no message took): entries expire in offset
    order (their timestamps grow with their offsets), so nothing after `since` has expired
    while the store holds an entry at or below it, or holds ``since + 1``.
    """
    if since.epoch != current.epoch:
        return Recovery([], current, "epoch_changed")
    if since.offset >= current.offset:
        await trio.lowlevel.checkpoint()
        return Recovery([], current)
    entries = await store.read(stream, since.epoch, since.offset, limit + 1)
    if not await _nothing_expired_after(store, stream, since, entries):
        return Recovery([], current, "retention")
    if len(entries) > limit:
        return Recovery([], current, "too_many")
    last = entries[-1].position if entries else since
    return Recovery(entries, last if last.offset > current.offset else current)


async def _nothing_expired_after(
    store: StreamStore, stream: str, since: StreamPosition, entries: list[StreamEntry]
) -> bool:
    """True when no entry after `since` can have expired (`entries`: those read after it)."""
    if entries and entries[0].position.offset == since.offset + 1:
        return True  # the very next one is there: nothing after it expired before it
    if since.offset <= 0:
        return False  # entry 1 is gone (or was never written: we cannot tell)
    if await store.contains(stream, since):
        return True
    return bool(await store.latest(stream, since.epoch, 1, before=since.offset))


# -- the tail cursor (sans-IO) ----------------------------------------------------------------
@dataclass
class StreamCursor:
    """Exactly-once, in-order delivery from repeated reads of a stream whose entries may become
    visible out of offset order.

    `done` is the offset up to which everything is settled (delivered, skipped, or older than
    the start). Feed it what a read of offsets > `done` returned; it returns the entries that
    can be delivered now, in offset order. An entry behind a missing offset (a *hole*: a write
    allocated but not yet visible) waits until the hole fills, or until something has waited
    behind it for `hole_timeout` seconds. Then the whole gap up to the next visible entry is
    skipped at once (counted in `skipped`): a reseed gap of 1,000 offsets (`RedisSequencer`
    after Redis lost its data) costs one `hole_timeout`, not a thousand. The next hole, if any,
    is timed from the same oldest waiting entry: it has been open at least as long.

    `now` is any monotonic clock in seconds (the tails use Trio's).
    """

    epoch: str
    done: int
    hole_timeout: float = 10.0
    skipped: int = 0
    # offset -> since when it waits (now of the feed that first saw it). Every key is > done
    # and never at done + 1 between calls: feed hands that one out (or passes it) at once.
    _waiting: dict[int, float] = field(default_factory=dict)
    _pending: dict[int, StreamEntry] = field(default_factory=dict)  # to hand out
    _settled_above: set[int] = field(default_factory=set)  # visible at the start: pass them
    _unstamped: bool = False  # some settled entries wait for the next feed's `now`

    def settle_existing(
        self, offsets: Iterable[int], since: float | Mapping[int, float] | None = None
    ) -> None:
        """Mark entries already visible when the cursor starts as not to be handed out
        (a live tail starts after them; holes below them are still handed out when they
        fill). `since` is when they count as waiting behind those holes (one time, or one per
        offset; default: the next feed's `now`). A caller that knows how old they are passes
        earlier times, so a hole already older than `hole_timeout` goes at the first feed."""
        for o in offsets:
            if o > self.done and o not in self._pending:
                at = since.get(o) if isinstance(since, Mapping) else since
                self._settled_above.add(o)
                self._waiting.setdefault(o, math.nan if at is None else at)
                self._unstamped |= at is None

    @property
    def holding(self) -> bool:
        """True while entries wait behind a hole (the caller should re-read soon)."""
        return bool(self._waiting)

    @property
    def settled_upto(self) -> int:
        """The greatest offset this cursor will pass without handing it out (an entry settled
        at the start, above an open hole), or `done` when there is none. Every offset above it
        that becomes visible is handed out."""
        return max(self._settled_above, default=self.done)

    def feed(self, entries: Iterable[StreamEntry], now: float) -> list[StreamEntry]:
        waiting = self._waiting
        if self._unstamped:
            self._unstamped = False
            for o, since in waiting.items():
                if math.isnan(since):  # settled without a time: waits from now on
                    waiting[o] = now
        for entry in entries:
            o = entry.position.offset
            if entry.position.epoch != self.epoch or o <= self.done or o in waiting:
                continue
            self._pending[o] = entry
            waiting[o] = now
        out: list[StreamEntry] = []
        while waiting:
            nxt = self.done + 1
            if nxt in waiting:
                del waiting[nxt]
                if nxt in self._settled_above:
                    self._settled_above.discard(nxt)
                else:
                    out.append(self._pending.pop(nxt))
                self.done = nxt
                continue
            if now - min(waiting.values()) < self.hole_timeout:
                break
            first = min(waiting)  # the whole gap below the first waiting entry goes at once
            self.skipped += first - nxt
            self.done = first - 1
        return out

    def next_hole_deadline(self) -> float | None:
        """When the open hole times out (None when nothing waits behind one)."""
        oldest = min((t for t in self._waiting.values() if not math.isnan(t)), default=None)
        return None if oldest is None else oldest + self.hole_timeout

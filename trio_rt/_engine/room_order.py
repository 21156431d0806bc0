"""RoomOrdering: the rooms with history on one server, their messages in offset order, each once.

The rule itself is `ReorderBuffer` (sans-IO, `_core/reorder.py`); this keeps one buffer per room
with local members and does the I/O the rule asks for (docs/streams.md, "Offset order on every
server"):

- one `Timers` task for every room's hole deadline (no task per room);
- store reads: the heals a buffer asks for (`ReorderBuffer.take_reads`), and after a break in
  the broker's subscriptions (`resync`) a read of what each room missed. `IO_WORKERS` tasks do
  them, one room at a time each, so at most that many reads run at once. A read that fails is
  retried until `heal_timeout`; then the hole is skipped and the members are told
  (``room_gap``);
- per member: the position it joined at (`floors`: it never gets an offset at or below it);
- per member recovering from ``since``: a `ReplayGate` (`_core/replay_gate.py`, the one recovery
  gate, shared with table subscriptions) behind the room's buffer, which merges the replay
  with what the buffer hands out, in offset order, each once. A hole in the replay at or
  below the buffer's position that the buffer may still hand out late (a write in flight
  when the replay read the store) waits `reorder_window`, then is read from the store like
  the buffer's own holes (skipped as a range if the store lacks it; ``room_gap`` to that
  member if the store cannot be read). One more `Timers` task serves every gate's deadline;
  the gates' reads go through the same store readers. The member leaves the gate once it
  caught up with the buffer;
  the offsets it got from the store that the buffer may still hand out are remembered
  (`replayed`: not sent again).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio

from .._core.envelope import Envelope
from .._core.protocol import StreamPosition
from .._core.reorder import ReorderBuffer, StoreRead
from .._core.replay_gate import ReplayGate
from .timers import Timers

if TYPE_CHECKING:
    from .history import RoomHistory
    from .streams import Recovery

__all__ = ["RoomOrdering"]

log = logging.getLogger("trio_rt.history")
T = TypeVar("T")

IO_WORKERS = 4  # store reads running at once, per server
READ_PAGE = 1000  # entries per heal read at most
RETRY_FIRST = 0.1  # seconds before a failed read is retried; doubles, up to RETRY_MAX
RETRY_MAX = 1.0


class _Counters(Protocol):
    reorder_skipped: int
    reorder_late: int
    reorder_healed: int
    reorder_duplicates: int
    room_gaps: int


GapHandler = Callable[[str, str, int, int | None, str, str | None], None]
"""``gap(room, epoch, first, last, reason, member)``: offsets first..last (last None: up to
the newest) may not have reached the room's local members (`member` None), or that one
connection (sync, must not wait)."""

MemberSender = Callable[[str, str, list[Envelope]], None]
"""``send(room, conn_id, envelopes)``: deliver to one member, in order (sync, must not wait)."""


class _Gate:
    """A member's recovery: its gate, and the epoch of its ``since``."""

    __slots__ = ("epoch", "gate")

    def __init__(self, gate: ReplayGate[Envelope], epoch: str) -> None:
        self.gate = gate
        self.epoch = epoch


class _StoreUnavailable(Exception):
    pass


class RoomOrdering:
    """Positioned room messages from the broker (and the store), handed to
    ``deliver(room, envelopes)`` in offset order, each once (sync, must not wait).

    - `open(room)` creates a room's buffer (before its first local member subscribes), and
      `start(room, position)` starts it at the position that member joined at; `feed` creates
      an unstarted one if needed. `drop` forgets it (the room's last local member left).
    - `member(room, conn_id, floor, reach_back)`: a member joined at `floor`; with
      `reach_back` (a recovery from `floor`) offsets after it that the buffer never handed
      out may still come out.
    - `recover_from(room, conn_id, since)` puts a member that recovers behind a gate (sync,
      before the replay reads the store and before the room's buffer starts); the deliverer
      hands what the buffer lets go for that member to `gate_live`; `recovered(room,
      conn_id, result)` merges the replay, and the member leaves the gate once it caught up.
      Offsets a gate sent from the store that the buffer may still hand out are kept in
      `replayed` (room -> connection id -> offsets), for the deliverer to skip once.
    - `resync()`: the broker's subscriptions broke and are back; every started room re-reads
      the store after what it handed out.
    - `run` runs the deadline tasks and the store readers until cancelled (the manager's
      nursery). Counters go into `counters`; skipped ranges the store could not confirm go to
      `gap`.
    """

    def __init__(
        self,
        deliver: Callable[[str, list[Envelope]], None],
        counters: _Counters,
        gap: GapHandler,
        history: RoomHistory | None = None,
        send: MemberSender | None = None,
    ) -> None:
        self.buffers: dict[str, ReorderBuffer[Envelope]] = {}
        self.timers = Timers[str]()  # room -> when its oldest held message gives up
        self.gates: dict[str, dict[str, _Gate]] = {}  # room -> connection id -> its recovery
        self.gate_timers = Timers[tuple[str, str]]()  # (room, connection id) -> a gate's wait
        self._send = send
        self.replayed: dict[str, dict[str, set[int]]] = {}
        self.floors: dict[str, dict[str, int]] = {}  # room -> connection id -> joined at
        self._floor_top: dict[str, tuple[str, int]] = {}  # room -> (floors' epoch, greatest)
        self._replayed_top: dict[str, int] = {}
        self._history = history
        self._deliver = deliver
        self._counters = counters
        self._gap = gap
        self.heal_timeout = history.heal_timeout if history is not None else 5.0
        self._io_queue: dict[str, None] = {}  # rooms with reads to do, in order (a set)
        self._io_busy: set[str] = set()
        self._io_again: set[str] = set()
        self._io_lot = trio.lowlevel.ParkingLot()
        self._resync: set[str] = set()

    def has(self, room: str) -> bool:
        return room in self.buffers

    def started(self, room: str) -> bool:
        buf = self.buffers.get(room)
        return buf is not None and buf.started

    def _new(self) -> ReorderBuffer[Envelope]:
        h = self._history
        window = h.reorder_window if h is not None else 0.0
        limit = h.reorder_limit if h is not None else 1000
        write_timeout = h.write_timeout if h is not None else None
        return ReorderBuffer[Envelope](window, limit, write_timeout=write_timeout)

    def open(self, room: str) -> None:
        if room not in self.buffers:
            self.buffers[room] = self._new()

    def start(self, room: str, position: StreamPosition) -> None:
        """Start `room`'s buffer at `position` (the first local member's), if not started."""
        buf = self.buffers.get(room)
        if buf is not None and not buf.started:
            self._step(room, buf, buf.start(position.epoch, position.offset, trio.current_time()))

    def member(self, room: str, conn_id: str, floor: StreamPosition, *, reach_back: bool) -> None:
        """`conn_id` joined `room` at `floor`: it gets no offset of that epoch at or below it.
        With `reach_back` (a recovery from `floor`), offsets after it that the buffer never
        handed out may still come out. Sync: call it before the recovery reads the store."""
        buf = self.buffers.get(room)
        if buf is None:
            return
        if reach_back:
            buf.reach_back(floor.epoch, floor.offset)
        if (buf.started and floor.epoch != buf.epoch) or floor.offset <= 0:
            return
        top = self._floor_top.get(room)
        if top is None or top[0] != floor.epoch:  # floors of one epoch at a time
            self.floors[room] = {}
            top = (floor.epoch, 0)
        self.floors[room][conn_id] = floor.offset
        self._floor_top[room] = (floor.epoch, max(top[1], floor.offset))

    def left(self, room: str, conn_id: str) -> None:
        """`conn_id` is no longer a member of `room`: forget what was kept for it."""
        floors = self.floors.get(room)
        if floors is not None:
            floors.pop(conn_id, None)
        replayed = self.replayed.get(room)
        if replayed is not None:
            replayed.pop(conn_id, None)
        self._drop_gate(room, conn_id)

    # -- a member's recovery ----------------------------------------------------------------------
    def recover_from(self, room: str, conn_id: str, since: StreamPosition) -> object | None:
        """`conn_id`, a member of `room` now, recovers from `since`: what the room's buffer
        lets go for it waits in a gate until `recovered`. Sync; call it before any await of
        the join (the buffer may not have started: offsets after `since` that it will count
        as its past are still this member's) and before the replay reads the store. Returns
        the recovery's token for `recovered` (None: the room has no buffer here)."""
        buf = self.buffers.get(room)
        if buf is None:
            return None
        self.member(room, conn_id, since, reach_back=True)
        h = self._history
        window = h.reorder_window if h is not None else 0.0
        limit = (h.reorder_limit + h.recovery_limit) if h is not None else 2000
        same = buf.started and buf.epoch == since.epoch
        gate = ReplayGate[Envelope](
            since.offset,
            max(buf.done, since.offset) if same else since.offset,
            tail_pending=buf.next_pending,
            window=window,
            limit=limit,
            now=trio.current_time(),
        )
        g = self.gates.setdefault(room, {})[conn_id] = _Gate(gate, since.epoch)
        return g

    def recovered(
        self, room: str, conn_id: str, token: object | None, result: Recovery | None
    ) -> tuple[list[Envelope], StreamPosition | None]:
        """The replay of `conn_id`'s recovery `token` (`result` None: it did not happen).
        Returns what to send now, in order, and the position the member is at (everything up
        to it was sent, nothing above it), or None when the recovery did not take place: the
        result failed, or the stream's epoch changed meanwhile (the gate was ended then)."""
        g = self.gates.get(room, {}).get(conn_id)
        if g is None or g is not token:
            return [], None
        if result is None or not result.recovered:
            out = g.gate.drain()
            self._drop_gate(room, conn_id)
            return out, None
        items = [
            (e.position.offset, _envelope(room, e.position, e.payload))
            for e in result.entries
            if e.position.epoch == g.epoch
        ]
        out = self._gate_out(room, conn_id, g, g.gate.replayed(items, trio.current_time()))
        return out, StreamPosition(g.gate.after, g.epoch)

    def gate_live(self, room: str, conn_id: str, env: Envelope) -> list[Envelope]:
        """The buffer let `env` go for `conn_id`, which is behind a gate: what to send now."""
        g = self.gates.get(room, {}).get(conn_id)
        if g is None:
            return [env]
        if env.epoch != g.epoch:  # a new epoch: the old one's order means nothing now
            out = g.gate.drain()
            self._drop_gate(room, conn_id)
            out.append(env)
            return out
        assert env.offset is not None
        now = trio.current_time()
        return self._gate_out(room, conn_id, g, g.gate.live(env.offset, env, now))

    def _sync_gates(self, room: str, buf: ReorderBuffer[Envelope]) -> None:
        """The room's buffer moved: its gates follow (their holes may be passed now)."""
        gates = self.gates.get(room)
        if not gates or not buf.started:
            return
        now = trio.current_time()
        for conn_id, g in list(gates.items()):
            if buf.epoch != g.epoch:
                out = g.gate.drain()
                self._drop_gate(room, conn_id)
            else:
                out = self._gate_out(room, conn_id, g, g.gate.advance(buf.done, now))
            self._send_member(room, conn_id, out)

    def _gate_due(self, key: tuple[str, str]) -> None:
        room, conn_id = key
        g = self.gates.get(room, {}).get(conn_id)
        if g is not None:
            out = self._gate_out(room, conn_id, g, g.gate.release(trio.current_time()))
            self._send_member(room, conn_id, out)

    def _gate_out(self, room: str, conn_id: str, g: _Gate, out: list[Envelope]) -> list[Envelope]:
        """Bookkeeping after a gate let `out` go: offsets the buffer may still hand out are
        remembered for this member, counters, the gate's deadline and reads; an open gate is
        dropped."""
        buf = self.buffers.get(room)
        if out and buf is not None and buf.started and buf.epoch == g.epoch:
            again = {e.offset for e in out if e.offset is not None and buf.pending(e.offset)}
            if again:
                self.replayed.setdefault(room, {}).setdefault(conn_id, set()).update(again)
                self._replayed_top[room] = max(self._replayed_top.get(room, 0), max(again))
        gate = g.gate
        late, filled = gate.take_counts()
        if late or filled:
            self._counters.reorder_late += late
            self._counters.reorder_healed += filled
        if gate.open:
            self._drop_gate(room, conn_id)
            return out
        if gate.wants_reads:
            self._want_io(room)
        deadline = gate.deadline()
        if deadline is None:
            self.gate_timers.cancel((room, conn_id))
        else:
            self.gate_timers.set((room, conn_id), deadline)
        return out

    def _drop_gate(self, room: str, conn_id: str) -> None:
        gates = self.gates.get(room)
        if gates is not None and gates.pop(conn_id, None) is not None:
            self.gate_timers.cancel((room, conn_id))
            if not gates:
                del self.gates[room]

    def _send_member(self, room: str, conn_id: str, out: list[Envelope]) -> None:
        if out and self._send is not None:
            self._send(room, conn_id, out)

    def floor_filter(self, room: str, epoch: str | None, offset: int) -> dict[str, int] | None:
        """The floors to check for `offset` (None: no member joined at or above it)."""
        top = self._floor_top.get(room)
        if top is None or top[0] != epoch or offset > top[1]:
            return None
        return self.floors.get(room)

    def feed(self, room: str, env: Envelope) -> None:
        """A positioned message of `room` (``env.offset`` set) as the broker delivered it."""
        assert env.offset is not None
        buf = self.buffers.get(room)
        if buf is None:
            buf = self.buffers[room] = self._new()
        self._step(room, buf, buf.feed(env.epoch or "", env.offset, env, trio.current_time()))

    def drop(self, room: str) -> None:
        if self.buffers.pop(room, None) is not None:
            self.timers.cancel(room)
        for conn_id in list(self.gates.get(room, ())):
            self._drop_gate(room, conn_id)
        self.replayed.pop(room, None)
        self._replayed_top.pop(room, None)
        self.floors.pop(room, None)
        self._floor_top.pop(room, None)
        self._resync.discard(room)

    def resync(self) -> None:
        """The broker's subscriptions broke and are back: what was published meanwhile may
        not have arrived. Every started room re-reads the store after what it handed out."""
        for room, buf in self.buffers.items():
            if buf.started:
                self._resync.add(room)
                self._want_io(room)

    # -- tasks ----------------------------------------------------------------------------------
    async def run(self) -> None:
        """The deadline tasks (rooms, gates) and `IO_WORKERS` store readers, until
        cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.timers.run, self._due)
            nursery.start_soon(self.gate_timers.run, self._gate_due)
            for _ in range(IO_WORKERS):
                nursery.start_soon(self._io_worker)

    def _due(self, room: str) -> None:
        buf = self.buffers.get(room)
        if buf is not None:
            self._step(room, buf, buf.release(trio.current_time()))

    def _want_io(self, room: str) -> None:
        if room in self._io_busy:
            self._io_again.add(room)
        elif room not in self._io_queue:
            self._io_queue[room] = None
            self._io_lot.unpark()

    async def _io_worker(self) -> None:
        while True:
            while not self._io_queue:
                await self._io_lot.park()
            room = next(iter(self._io_queue))
            del self._io_queue[room]
            self._io_busy.add(room)
            try:
                await self._serve(room)
            finally:
                self._io_busy.discard(room)
                if room in self._io_again:
                    self._io_again.discard(room)
                    self._want_io(room)

    async def _serve(self, room: str) -> None:
        """Do `room`'s pending reads (its buffer's, then its gates'), one after the other."""
        while True:
            buf = self.buffers.get(room)
            if buf is None:
                return
            if room in self._resync:
                self._resync.discard(room)
                await self._resync_room(room, buf)
                continue
            reads = buf.take_reads()
            if reads:
                await self._serve_buffer(room, buf, reads)
                continue
            gates = self.gates.get(room, {})
            wanted = [(c, g, g.gate.take_reads()) for c, g in gates.items() if g.gate.wants_reads]
            if not wanted:
                return
            for conn_id, g, gate_reads in wanted:
                await self._serve_gate(room, conn_id, g, gate_reads)

    async def _serve_buffer(
        self, room: str, buf: ReorderBuffer[Envelope], reads: list[StoreRead]
    ) -> None:
        for read in reads:
            if self.buffers.get(room) is not buf:
                return  # dropped meanwhile
            try:
                found, covered = await self._read(room, read.epoch, read.after, read.upto)
            except Exception as exc:  # never leave the buffer waiting for an answer
                if not isinstance(exc, _StoreUnavailable):
                    log.exception("reading room %r from the store failed", room)
                if self.buffers.get(room) is buf:
                    self._step(room, buf, buf.unhealed(read, trio.current_time()))
                continue
            if self.buffers.get(room) is not buf:
                return  # the room's members left meanwhile
            self._step(room, buf, buf.healed(read, found, trio.current_time(), covered))

    async def _serve_gate(self, room: str, conn_id: str, g: _Gate, reads: list[StoreRead]) -> None:
        """A gate's reads: its holes, in its epoch (a gate's reads name no epoch)."""
        gate = g.gate
        for read in reads:
            try:
                found, covered = await self._read(room, g.epoch, read.after, read.upto)
            except Exception as exc:  # never leave the gate waiting for an answer
                if not isinstance(exc, _StoreUnavailable):
                    log.exception("reading room %r from the store failed", room)
                if self.gates.get(room, {}).get(conn_id) is not g:
                    return
                out = gate.unhealed(read, trio.current_time())
                gaps = gate.take_gaps()
                out = self._gate_out(room, conn_id, g, out)
                self._with_gaps(
                    room,
                    g.epoch,
                    gaps,
                    out,
                    lambda envs: self._send_member(room, conn_id, envs),
                    conn_id,
                )
                continue
            if self.gates.get(room, {}).get(conn_id) is not g:
                return  # the member left, or its gate ended, meanwhile
            out = gate.healed(read, found, trio.current_time(), covered)
            self._send_member(room, conn_id, self._gate_out(room, conn_id, g, out))

    async def _read(
        self, room: str, epoch: str, after: int, upto: int
    ) -> tuple[list[tuple[int, Envelope]], int]:
        """Entries of `room` in (after, upto], a page at most: (offset, envelope) pairs, and the
        offset up to which the answer is complete. Retries until `heal_timeout`, then raises
        _StoreUnavailable."""
        history = self._history
        assert history is not None
        limit = max(1, min(READ_PAGE, upto - after))
        entries = await self._retrying(
            room, after, history.store.read, history.stream(room), epoch, after, limit, upto=upto
        )
        found = [
            (e.position.offset, _envelope(room, e.position, e.payload))
            for e in entries
            if e.position.epoch == epoch and after < e.position.offset <= upto
        ]
        covered = entries[-1].position.offset if len(entries) >= limit else upto
        return found, covered

    async def _retrying(
        self, room: str, after: int, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
    ) -> T:
        """``await fn(*args, **kwargs)``, retried with backoff until `heal_timeout`."""
        delay = RETRY_FIRST
        with trio.move_on_after(self.heal_timeout):
            while True:
                try:
                    return await fn(*args, **kwargs)
                except Exception:
                    log.warning(
                        "reading room %r after offset %d failed", room, after, exc_info=True
                    )
                await trio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)
        raise _StoreUnavailable

    async def _resync_room(self, room: str, buf: ReorderBuffer[Envelope]) -> None:
        """Re-read what `room` may have missed while the broker's subscriptions were broken."""
        history = self._history
        assert history is not None
        epoch, after = buf.epoch, buf.done
        assert epoch is not None
        limit = history.recovery_limit
        stream = history.stream(room)
        try:
            entries = await self._retrying(
                room, after, history.store.read, stream, epoch, after, limit + 1
            )
            head = None
            if len(entries) > limit:
                head = await self._retrying(room, after, history.current, room)
        except _StoreUnavailable:
            self._report(room, epoch, after + 1, None, "unavailable")
            return
        if self.buffers.get(room) is not buf or buf.epoch != epoch:
            return  # dropped, or a new epoch began meanwhile
        now = trio.current_time()
        if head is not None:
            # More than a recovery would replay: the members are told, as a reconnecting
            # client would be (too_many), and the order goes on from the head.
            if head.epoch == epoch and head.offset > buf.done:
                self._report(room, epoch, buf.done + 1, head.offset, "too_many")
                self._step(room, buf, buf.skip_to(head.offset, now))
            return
        out: list[Envelope] = []
        duplicates = buf.duplicates
        for e in entries:
            env = _envelope(room, e.position, e.payload)
            out.extend(buf.feed(epoch, e.position.offset, env, now))
        buf.filled += len(entries) - (buf.duplicates - duplicates)
        self._step(room, buf, out)

    def _report(
        self,
        room: str,
        epoch: str,
        first: int,
        last: int | None,
        reason: str,
        member: str | None = None,
    ) -> None:
        self._counters.room_gaps += 1
        self._gap(room, epoch, first, last, reason, member)

    def _step(self, room: str, buf: ReorderBuffer[Envelope], ready: list[Envelope]) -> None:
        """Deliver what `buf` let go, count, report gaps, schedule its deadline and reads."""
        c = self._counters
        if buf.skipped or buf.late or buf.filled or buf.duplicates:  # into the server's counters
            c.reorder_skipped += buf.skipped
            c.reorder_late += buf.late
            c.reorder_healed += buf.filled
            c.reorder_duplicates += buf.duplicates
            buf.skipped = buf.late = buf.filled = buf.duplicates = 0
        if buf.has_gaps:
            assert buf.epoch is not None
            self._with_gaps(
                room, buf.epoch, buf.take_gaps(), ready, lambda envs: self._deliver(room, envs)
            )
        elif ready:
            self._deliver(room, ready)
        if room in self.gates:
            self._sync_gates(room, buf)
        if buf.wants_reads:
            self._want_io(room)
        deadline = buf.deadline()
        if deadline is None:
            self.timers.cancel(room)
        else:
            self.timers.set(room, deadline)
        self._prune(room, buf)

    def _with_gaps(
        self,
        room: str,
        epoch: str,
        gaps: list[tuple[int, int]],
        ready: list[Envelope],
        deliver: Callable[[list[Envelope]], None],
        member: str | None = None,
    ) -> None:
        """Deliver `ready`, each gap's notice just before the first message past its range."""
        gaps.sort()
        i = 0
        for first, last in gaps:
            j = i
            while j < len(ready) and (ready[j].offset or 0) < first:
                j += 1
            if j > i:
                deliver(ready[i:j])
                i = j
            self._report(room, epoch, first, last, "unavailable", member)
        if i < len(ready):
            deliver(ready[i:])

    def _prune(self, room: str, buf: ReorderBuffer[Envelope]) -> None:
        """Forget replayed offsets that can no longer come out (`done` passed them). Floors
        stay while their member does (`left`): a late offset may still be below one."""
        if not buf.started:
            return
        top = self._replayed_top.get(room)
        if top is not None and buf.done >= top:
            del self._replayed_top[room]
            replayed = self.replayed.get(room, {})
            for conn_id, offsets in list(replayed.items()):
                offsets.intersection_update([o for o in offsets if buf.pending(o)])
                if not offsets:
                    del replayed[conn_id]
            if not replayed:
                self.replayed.pop(room, None)


def _envelope(room: str, position: StreamPosition, payload: str) -> Envelope:
    return Envelope(
        payload.encode("utf-8"), rooms=(room,), offset=position.offset, epoch=position.epoch
    )

"""Change streams: Cassandra table changes pushed to server callbacks and to clients.

Cassandra has no change feed a client can read, so trio_rt records changes as it writes them:
`Database` (trio_rt.cassandra) writes each insert/update/delete and a change entry in one
logged batch (`ChangeLog`, the capture seam). The entry lands in the stream ``table:<name>``
of a `CassandraStreamStore` at a position taken from a `Sequencer` (`RedisSequencer` when
several processes write), with the batch's write timestamp taken from the same sequencer, so
position order is Cassandra's last-write-wins order.

Two components use it:

- `ChangeStreamManager` (a server): its `ChangeLog` captures the writes made through its
  `Database`, and it tails the streams it needs:

  - a *watcher* (`watch`) is a server-side callback with its own cursor; a named watcher
    stores its position after each batch of changes, so a restarted server resumes where it
    stopped;
  - the *live tail* of a table feeds every client subscription to it (`subscribe` messages);
    a subscription with ``since`` is joined to it by a `ReplayGate` (each offset once, in
    order).

- `ChangePublisher` (a process that only writes: a worker, a job): capture and nudges without
  serving WebSockets.

Tails poll the store every `poll_interval` and are woken at once by this process's own writes
and, through the broker (Redis), by other processes' writes (*nudges*). A write that commits
after writes with greater offsets (a slow batch) leaves a hole; `StreamCursor` holds what is
behind it until it fills or `hole_timeout` passes (then the whole gap goes at once), so changes
are handed out in position order, each once. A failed store read is logged and retried: a tail
outlives a Cassandra outage. Every task lives in the manager's nursery, under this component's
own nursery.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from ._broker import Broker
from ._checks import require_positive_ints, require_positive_numbers
from ._filters import RowFilter, parse_filters
from ._outbox import OutboundMessage
from ._protocol import ErrorCode, ProtocolError, StreamPosition, Subscribe, Unsubscribe, encode
from ._protocol import reply as protocol_reply
from ._replay_gate import ReplayGate
from ._streams import (
    Allocation,
    MemorySequencer,
    Recovery,
    Sequencer,
    StreamCursor,
    StreamEntry,
    recover,
    warn_memory_behind_broker,
)
from ._watch_positions import WatchPositions

if TYPE_CHECKING:
    from ._connection import Connection
    from ._manager import WebSocketManager
    from .cassandra import CapturedWrite, CdcSource, Change, ChangeSource, Database, Table
    from .cassandra._streams import CassandraStreamStore

__all__ = ["ChangeEvent", "ChangeLog", "ChangePublisher", "ChangeStreamManager", "Watch"]

log = logging.getLogger("trio_rt.changes")

OPERATIONS = frozenset({"insert", "update", "delete"})
Permission = Callable[["Connection", str, str], "bool | Awaitable[bool]"]
RETRY_MAX = 5.0  # seconds between attempts at most, while the store fails


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One change as watchers receive it. `key` and `data` hold JSON values (uuids and
    timestamps as strings), the same as clients get in ``data_update``.

    `data` is the row for an insert; for an update the key and the changed columns, for a
    delete the key, unless the table is defined with ``capture_full_rows=True``: then the
    whole row after an update, and the last known row for a delete (docs/streams.md)."""

    table: str
    operation: str
    key: dict[str, Any]
    data: dict[str, Any]
    position: StreamPosition

    def to_json(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "key": self.key,
            "data": self.data,
            "position": self.position.to_json(),
        }


def _stream(table: str) -> str:
    return f"table:{table}"


def nudge_channel(channel_prefix: str) -> str:
    """The broker channel change nudges travel on (``<channel_prefix>:changes``)."""
    return f"{channel_prefix}:changes"


class ChangeLog:
    """The `ChangeCapture` that records changes in a stream store: each write through a
    `Database` gets a position from `sequencer` and a change entry in the same logged batch;
    a committed write calls ``notify(stream, offset)`` (what wakes tails and sends nudges).

    `ChangeStreamManager` and `ChangePublisher` make and install one; build it yourself only
    to capture without either (then nothing wakes the tails: they find the changes by
    polling).
    """

    def __init__(
        self,
        store: CassandraStreamStore,
        sequencer: Sequencer,
        notify: Callable[[str, int], None] | None = None,
    ) -> None:
        self.store = store
        self.sequencer = sequencer
        self.notify = notify

    async def prepare(self, change: Change) -> CapturedWrite:
        from .cassandra import CapturedWrite

        stream = _stream(change.table)
        allocation = await self.sequencer.next(stream)
        table = change.definition
        if table is None:
            raise ValueError(f"a change to {change.table!r} without its table definition")
        event = {
            "operation": change.operation,
            "key": table.to_json(change.key),
            "data": table.to_json(change.data),
        }
        payload = encode(event).decode("utf-8")
        return CapturedWrite(
            allocation.timestamp,
            self.store.append_statements(stream, allocation, payload),
            token=allocation,
        )

    def committed(self, change: Change, write: CapturedWrite) -> None:
        if self.notify is not None:
            allocation = write.token
            offset = allocation.position.offset if isinstance(allocation, Allocation) else 0
            self.notify(_stream(change.table), offset)

    def failed(self, change: Change, write: CapturedWrite, exc: BaseException) -> None:
        # The allocated offset stays a hole; readers skip it after their hole_timeout.
        log.debug("change to %s not written (%r): its position stays a hole", change.table, exc)


class _Nudges:
    """The nudges one process publishes after its committed writes.

    Policy when writes outpace the publisher: coalesce, one nudge per stream carrying the
    greatest offset committed since the last one. A nudge is a hint (tails poll anyway), so
    a failed publish is logged, not retried."""

    def __init__(self, broker: Broker, channel: str) -> None:
        self.broker = broker
        self.channel = channel
        self.origin = secrets.token_hex(6).encode()
        self._pending: dict[str, int] = {}
        self._ready = trio.Event()
        self._idle = trio.Event()
        self._idle.set()

    def add(self, stream: str, offset: int) -> None:
        self._pending[stream] = max(offset, self._pending.get(stream, 0))
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._ready.set()

    def decode(self, data: bytes) -> tuple[str, int] | None:
        """A nudge from another process as (stream, offset); None for our own or a bad one."""
        try:
            origin, offset, stream = data.split(b"\n", 2)
            announced = int(offset)
        except ValueError:
            log.warning("ignoring a malformed change nudge")
            return None
        if origin == self.origin:
            return None
        return stream.decode("utf-8", "replace"), announced

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready = trio.Event()
            pending, self._pending = self._pending, {}
            for stream, offset in pending.items():
                try:
                    await self.broker.publish(
                        self.channel, b"%s\n%d\n%s" % (self.origin, offset, stream.encode())
                    )
                except Exception:
                    log.warning("could not publish a change nudge; others poll", exc_info=True)
            if not self._pending:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Until every nudge added so far has been handed to the broker."""
        await self._idle.wait()


class ChangePublisher:
    """Change capture and nudges for a process that writes but serves no WebSockets (a worker,
    a batch job, a script).

    ``ChangePublisher(db, broker=RedisBroker(url), sequencer=RedisSequencer(url, namespace=ns))``
    installs a `ChangeLog` as `db`'s capture (`ValueError` if `db` already has one): every
    insert/update/delete through `db` is stored with its change entry, at a position from
    `sequencer`, in `store` (default: a `CassandraStreamStore` in `db`'s keyspace). After each
    committed write a nudge goes out on the broker channel ``<channel_prefix>:changes``: the
    tails of every `ChangeStreamManager` wake at once (without it they find the change at
    their next poll). Use the same Redis, sequencer `namespace` and `channel_prefix` as the
    servers.

    Run it while writing, in the caller's nursery: ``async with publisher:`` (which, on a
    normal exit, waits up to `flush_timeout` for the last nudges to leave) or
    ``await nursery.start(publisher.run)``. It runs the broker's and the sequencer's I/O
    (and the one trio-asyncio loop they need, unless one is already open) in its own task;
    writes need it running (`RedisSequencer` refuses them otherwise).
    """

    def __init__(
        self,
        db: Database,
        *,
        broker: Broker,
        sequencer: Sequencer,
        store: CassandraStreamStore | None = None,
        channel_prefix: str = "trio_rt",
        flush_timeout: float = 2.0,
    ) -> None:
        from .cassandra._streams import CassandraStreamStore

        if db.capture is not None:
            raise ValueError("this Database already has a change capture")
        self.db = db
        self.broker = broker
        self.sequencer = sequencer
        self.store = store if store is not None else CassandraStreamStore(db.session, db.keyspace)
        self.sequencer.attach(self.store)
        self.flush_timeout = float(flush_timeout)
        self._nudges = _Nudges(broker, nudge_channel(channel_prefix))
        self.changelog = ChangeLog(self.store, sequencer, self._nudges.add)
        db.capture = self.changelog
        self._stop: trio.CancelScope | None = None
        self._cm: Any = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the broker, the sequencer and the nudge publisher until cancelled."""
        runner = getattr(self.sequencer, "run", None)
        async with contextlib.AsyncExitStack() as stack:
            if getattr(self.broker, "needs_asyncio", False) or getattr(
                self.sequencer, "needs_asyncio", False
            ):
                # Only for a component that says it needs one (trio_rt's Redis components no
                # longer do): importing trio_asyncio patches asyncio for the whole process.
                from .redis._aio import ensure_loop

                await stack.enter_async_context(ensure_loop())  # one loop for both
            nursery = await stack.enter_async_context(trio.open_nursery())
            await nursery.start(self.broker.run, _ignore_message)
            if runner is not None:
                await nursery.start(runner)
            nursery.start_soon(self._nudges.run)
            task_status.started()
            await trio.sleep_forever()

    async def flush(self) -> None:
        """Until the nudges of the writes committed so far are handed to the broker, and the
        broker's own queue is empty (bounded by `flush_timeout`)."""
        with trio.move_on_after(self.flush_timeout):
            await self._nudges.wait_idle()
            while self.broker.backlog:  # noqa: ASYNC110 (a broker has no event for it)
                await trio.sleep(0.01)

    async def __aenter__(self) -> ChangePublisher:
        self._cm = trio.open_nursery()
        nursery = await self._cm.__aenter__()
        try:
            await nursery.start(self.run)
        except BaseException as exc:
            await self._cm.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._stop = nursery.cancel_scope
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        assert self._stop is not None
        if exc[0] is None:
            await self.flush()
        self._stop.cancel()
        return await self._cm.__aexit__(*exc)  # type: ignore[no-any-return]


def _ignore_message(channel: str, data: bytes) -> None:
    """A publisher subscribes to nothing."""


@dataclass(eq=False)
class Watch:
    """A server-side watcher (`ChangeStreamManager.watch`); `cancel()` stops it.

    `ready` is set once its start position is fixed (`watch()` waits for it when the manager
    is serving). `position` is where it has got to: every change at or below it was handed to
    the callback (or skipped as a hole, or predates the start); the next change it gets is
    the first one after it. A named watcher stores it after each batch.
    """

    table: str
    operations: frozenset[str]
    callback: Callable[[ChangeEvent], Awaitable[None]]
    name: str | None
    position: StreamPosition | None = None
    ready: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    errors: int = 0

    def cancel(self) -> None:
        self.scope.cancel()


@dataclass(eq=False)
class _Subscription:
    id: str
    conn: Connection
    table: str
    filter: RowFilter
    prefix: bytes  # the encoded data_update up to the event, shared by every delivery
    gate: ReplayGate[OutboundMessage] | None = None  # while joining replay and live

    def frame(self, event_json: bytes) -> OutboundMessage:
        """This subscription's ``data_update`` for an encoded event."""
        return OutboundMessage(self.prefix + event_json + b"}")


@dataclass(eq=False)
class _LiveTail:
    table: Table
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)
    gated: dict[str, _Subscription] = field(default_factory=dict)  # gate not open yet
    cursor: StreamCursor | None = None
    ready: trio.Event = field(default_factory=trio.Event)


class ChangeStreamManager:
    """Change notifications for tables written through `db` (a `trio_rt.cassandra.Database`).

    `ChangeStreamManager(db, manager, store=..., sequencer=...)` installs its `ChangeLog` as
    the database's capture (unless it has one), adds the built-in ``subscribe`` /
    ``unsubscribe`` messages to `manager` and runs its tasks in the manager's nursery (it
    starts with the manager, or at once if the manager is serving). It uses the manager's
    public seams only: `add_command`, `listen` / `stop_listening` (the nudge channel),
    `begin_fan_out`, `add_service`, `on_disconnect`, `attach_change_streams` (for metrics).

    `tables` lists the tables clients may subscribe to (also: `expose`). `has_permission`
    (``(conn, table, "read") -> bool``, sync or async) runs before a subscription exists;
    by default the manager's `authorize(conn, "table:<name>", "read")` (without a
    `PermissionStore`: every table in `tables` is readable). A denied or unknown table gets
    the same ``not_permitted`` answer.

    `store` defaults to a `CassandraStreamStore` in the database's keyspace (create the
    tables first: `create_schema()`, `trio_rt.cassandra.create_schema` or
    ``trio-rt schema create``), `sequencer` to a memory sequencer: pass a `RedisSequencer`
    when several processes write (processes that only write use `ChangePublisher`).
    `positions` (a `WatchPositions`) keeps named watchers' positions; it defaults to a
    `CassandraWatchPositions` in the database's keyspace (the same schema calls create it).

    `source` says where changes come from (docs/streams.md "Choosing the source"):
    ``Outbox()`` (the default: writes through `db`), ``Cdc(agents=[...])`` (every client's
    writes, from Cassandra's CDC; `cdc` is then the `CdcSource`, run in the manager's service
    nursery) or ``Cdc(agents=[...], outbox=True)`` (both, each change once). `TypeError` for
    something else, `ValueError` when `db`'s capture contradicts it.
    """

    def __init__(
        self,
        db: Database,
        manager: WebSocketManager,
        *,
        store: CassandraStreamStore | None = None,
        sequencer: Sequencer | None = None,
        positions: WatchPositions | None = None,
        tables: Iterable[Table] = (),
        has_permission: Permission | None = None,
        poll_interval: float = 0.5,
        hole_timeout: float = 10.0,
        batch_size: int = 500,
        recovery_limit: int = 1000,
        start_window: int = 1000,
        source: ChangeSource | None = None,
    ) -> None:
        from .cassandra import CassandraStreamStore, CassandraWatchPositions, Outbox
        from .cassandra._sources import install_source

        require_positive_numbers(poll_interval=poll_interval, hole_timeout=hole_timeout)
        require_positive_ints(
            batch_size=batch_size, recovery_limit=recovery_limit, start_window=start_window
        )
        self.db = db
        self.manager = manager
        self.store = store if store is not None else CassandraStreamStore(db.session, db.keyspace)
        self.sequencer = sequencer if sequencer is not None else MemorySequencer()
        self.sequencer.attach(self.store)
        self.positions = (
            positions if positions is not None else CassandraWatchPositions(db.session, db.keyspace)
        )
        self.poll_interval = float(poll_interval)
        self.hole_timeout = float(hole_timeout)
        self.batch_size = batch_size
        self.recovery_limit = recovery_limit
        self.start_window = start_window
        self._tables: dict[str, Table] = {}  # exposed to client subscriptions
        self._nudges = _Nudges(manager.broker, nudge_channel(manager.options.channel_prefix))
        self.changelog = ChangeLog(self.store, self.sequencer, self._notify)
        self.source = source if source is not None else Outbox()
        tables = list(tables)
        #: The CDC consumer (``source=Cdc(...)``), else None.
        self.cdc: CdcSource | None = install_source(
            self.source,
            db,
            self.changelog,
            store=self.store,
            sequencer=self.sequencer,
            notify=self._notify,
            tables=tables,
        )
        for table in tables:
            self.expose(table)
        self._has_permission = has_permission
        self._wakeups: dict[str, trio.Event] = {}
        # Per stream: a counter bumped by every nudge (a tail that was busy reading when one
        # came does not miss it), and the greatest offset a nudge announced.
        self._generation: dict[str, int] = {}
        self._announced: dict[str, int] = {}
        self._nursery: trio.Nursery | None = None
        self._watches: list[Watch] = []
        self._live: dict[str, _LiveTail] = {}
        self._by_conn: dict[str, dict[str, _Subscription]] = {}
        self.stats = {
            "changes": 0,
            "deliveries": 0,
            "skipped_holes": 0,
            "callback_errors": 0,
            "read_errors": 0,
        }
        self._lag = 0.0
        manager.attach_change_streams(self)
        manager.add_command(Subscribe, self._subscribe_command)
        manager.add_command(Unsubscribe, self._unsubscribe_command)
        manager.on_disconnect(self._on_disconnect)
        cdc_run = self.cdc.run if self.cdc is not None else None
        for service in getattr(self.sequencer, "run", None), cdc_run, self.run:
            if service is not None:
                manager.add_service(service)

    def expose(self, table: Table) -> None:
        """Allow client subscriptions to `table` (subject to `has_permission`); with
        ``Cdc(tables=None)`` CDC records it too."""
        self._tables[table.name] = table
        if self.cdc is not None and self.cdc.follows_manager:
            self.cdc.track(table)

    # -- lifecycle ------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The component's tasks: nudges in and out, watchers, live tails. Run by the manager."""
        manager = self.manager
        warn_memory_behind_broker(
            log, "ChangeStreamManager", manager.broker, self.sequencer, None, "RedisSequencer"
        )
        channel = self._nudges.channel
        async with trio.open_nursery() as nursery:
            await manager.listen(channel, self._on_nudge)
            nursery.start_soon(self._nudges.run)
            self._nursery = nursery
            try:
                for watch in self._watches:
                    nursery.start_soon(self._run_watch, watch)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None
                manager.stop_listening(channel)

    # -- nudges ---------------------------------------------------------------------------------
    def _wake(self, stream: str, offset: int) -> None:
        self._generation[stream] = self._generation.get(stream, 0) + 1
        if offset > self._announced.get(stream, 0):
            self._announced[stream] = offset
        event = self._wakeups.pop(stream, None)
        if event is not None:
            event.set()

    def _notify(self, stream: str, offset: int) -> None:
        """A write through this server committed: wake local tails, tell the other servers."""
        self._wake(stream, offset)
        self._nudges.add(stream, offset)

    def _on_nudge(self, data: bytes) -> None:
        nudge = self._nudges.decode(data)
        if nudge is not None:
            self._wake(*nudge)

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

    async def _retrying(self, what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
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

    # -- reading --------------------------------------------------------------------------------
    async def _start_cursor(self, stream: str, resume: StreamPosition | None) -> StreamCursor:
        """A cursor at `resume`, or after everything visible now (holes below still count)."""
        return await self._retrying(  # type: ignore[no-any-return]
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

    async def _tail(
        self,
        stream: str,
        cursor: StreamCursor,
        deliver: Callable[[list[StreamEntry], StreamCursor], Awaitable[None]],
        on_reset: Callable[[StreamCursor], None],
    ) -> None:
        """Read `stream` from `cursor` until cancelled; ``await deliver(entries, cursor)`` each
        time entries come out or the cursor's position moves (a hole skipped, settled entries
        passed). `on_reset` gets the new cursor when the stream's epoch changes."""
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
                        cursor = StreamCursor(head.position.epoch, 0, self.hole_timeout)
                        self._announced.pop(stream, None)
                        on_reset(cursor)
                entries = (
                    await self.store.read(
                        stream, cursor.epoch, cursor.done, self.batch_size, upto=upto
                    )
                    if upto > cursor.done
                    else []
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
                self._lag = max(0.0, time.time() - ready[-1].timestamp / 1e6)
            elif not entries:
                self._lag = 0.0
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

    @staticmethod
    def _event(table: str, entry: StreamEntry) -> ChangeEvent:
        body = json.loads(entry.payload)
        return ChangeEvent(table, body["operation"], body["key"], body["data"], entry.position)

    # -- watchers -------------------------------------------------------------------------------
    async def watch(
        self,
        table: Table | str,
        *,
        callback: Callable[[ChangeEvent], Awaitable[None]],
        operations: Sequence[str] = ("insert", "update", "delete"),
        name: str | None = None,
    ) -> Watch:
        """Call ``await callback(event)`` for every change to `table` (of `operations`) after
        the watcher's start position, in position order, each once.

        The start position: for a `name`d watcher with a stored position, that position (it
        resumes where it stopped, changes written while no server ran included); otherwise
        the changes visible when it starts are not handed out, and every later one is
        (including a write still in flight below them). Returns once the start position is
        fixed (``watch.ready`` set, ``watch.position`` holding it), or at once if the manager
        is not serving yet: the watcher then starts with it (await ``watch.ready``).

        Callbacks of one watcher run one at a time in its own task: a slow callback delays
        only its watcher. An exception in the callback is logged and counted; the watcher
        goes on. A named watcher stores its position after each batch, and when it is
        stopped (`cancel`, the manager's shutdown) the position of the last callback that
        finished: a graceful restart repeats nothing; a callback interrupted by the stop is
        handed the same change again after the restart.
        """
        table_name = table if isinstance(table, str) else table.name
        ops = frozenset(operations)
        if not ops or not ops <= OPERATIONS:
            raise ValueError(f"operations must be some of {sorted(OPERATIONS)}, not {operations!r}")
        if not inspect.iscoroutinefunction(callback) and not inspect.iscoroutinefunction(
            getattr(callback, "__call__", None)  # noqa: B004
        ):
            raise TypeError("callback must be an async function")
        if name is not None and (not isinstance(name, str) or not 0 < len(name) <= 200):
            raise ValueError("name must be a non-empty string of at most 200 characters")
        cdc = self.cdc
        if cdc is not None and cdc.follows_manager and not isinstance(table, str):
            cdc.track(table)
        if cdc is not None and self.db.capture is None and table_name not in cdc.tables:
            # CDC alone (no capture: nothing else records it)
            raise ValueError(
                f"CDC does not record {table_name!r}: pass its Table (or list it in Cdc(tables=))"
            )
        watch = Watch(table_name, ops, callback, name)
        self._watches.append(watch)
        if self._nursery is not None:
            self._nursery.start_soon(self._run_watch, watch)
            await watch.ready.wait()
        else:
            await trio.lowlevel.checkpoint()
        return watch

    async def create_schema(self) -> None:
        """Create the stream tables and the watcher positions' storage (idempotent); with the
        defaults the same as ``trio_rt.cassandra.create_schema(session, keyspace,
        parts=("streams", "watchers"))``; with a CDC source also its claims table."""
        await self.store.create_schema()
        await self.positions.create_schema()
        if self.cdc is not None:
            await self.cdc.create_schema()

    async def _run_watch(self, watch: Watch) -> None:
        stream = _stream(watch.table)
        name = watch.name
        with watch.scope:
            try:
                resume = None
                if name is not None:
                    key = name
                    resume = await self._retrying(
                        f"loading watcher {name!r}'s position", lambda: self.positions.load(key)
                    )
                cursor = await self._start_cursor(stream, resume)
                watch.position = StreamPosition(cursor.done, cursor.epoch)
            finally:
                watch.ready.set()
            saved = resume

            async def save() -> None:
                nonlocal saved
                position = watch.position
                if name is None or position is None or position == saved:
                    return
                # Shielded and bounded: a stop must not lose the position of what was handed
                # out (a graceful restart would repeat it), nor hang on a dead store.
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    try:
                        await self.positions.save(name, position)
                        saved = position
                    except Exception as exc:
                        log.warning("watcher %r: position not saved (%r)", name, exc)

            async def deliver(entries: list[StreamEntry], cursor: StreamCursor) -> None:
                try:
                    for entry in entries:
                        event = self._event(watch.table, entry)
                        if event.operation in watch.operations:
                            try:
                                await watch.callback(event)
                            except Exception:
                                watch.errors += 1
                                self.stats["callback_errors"] += 1
                                log.exception("change watcher on %s failed", watch.table)
                        watch.position = entry.position
                    # Past the batch: holes skipped and entries passed up to the cursor's
                    # position are settled too.
                    watch.position = StreamPosition(cursor.done, cursor.epoch)
                finally:
                    await save()

            def on_reset(cursor: StreamCursor) -> None:
                watch.position = StreamPosition(cursor.done, cursor.epoch)

            try:
                await self._tail(stream, cursor, deliver, on_reset)
            finally:
                await save()

    # -- client subscriptions -------------------------------------------------------------------
    async def _allowed(self, conn: Connection, table: str) -> bool:
        if table not in self._tables:
            return False
        check = self._has_permission
        if check is None:
            return await self.manager.authorize(conn, f"table:{table}", "read")
        result = check(conn, table, "read")
        if inspect.isawaitable(result):
            result = await result
        return bool(result)

    async def _live_tail(self, table: Table) -> _LiveTail:
        tail = self._live.get(table.name)
        if tail is None:
            if self._nursery is None:
                raise RuntimeError("the change streams are not running")
            tail = self._live[table.name] = _LiveTail(table)
            self._nursery.start_soon(self._run_live, tail)
        await tail.ready.wait()
        return tail

    async def _run_live(self, tail: _LiveTail) -> None:
        stream = _stream(tail.table.name)
        try:
            tail.cursor = await self._start_cursor(stream, None)
        finally:
            tail.ready.set()

        async def deliver(entries: list[StreamEntry], cursor: StreamCursor) -> None:
            for entry in entries:
                self._fan_out(tail, entry)
            if tail.gated:
                self._advance_gates(tail, cursor.done)
            await trio.lowlevel.checkpoint()

        def on_reset(cursor: StreamCursor) -> None:
            # Positions of the old epoch mean nothing now: gated subscriptions go live at
            # once (a replay still running sees the reset and answers epoch_changed).
            tail.cursor = cursor
            for sub in tail.gated.values():
                sub.gate = None
            tail.gated.clear()

        await self._tail(stream, tail.cursor, deliver, on_reset)

    def _send(self, sub: _Subscription, message: OutboundMessage, cork: bool | None) -> None:
        self.stats["deliveries"] += 1
        sub.conn.send_encoded(message, cork)

    def _fan_out(self, tail: _LiveTail, entry: StreamEntry) -> None:
        if not tail.subscriptions:
            return
        event_json, data = self._decode(tail.table, entry)
        offset = entry.position.offset
        cork = self.manager.begin_fan_out()  # one decision for every recipient
        for sub in list(tail.subscriptions.values()):
            matches = data is not None and sub.filter.matches(data)
            gate = sub.gate
            if gate is None:
                if matches:
                    self._send(sub, sub.frame(event_json), cork)
                continue
            for message in gate.live(offset, sub.frame(event_json) if matches else None):
                self._send(sub, message, cork)
            if gate.open:
                self._ungate(tail, sub)

    def _advance_gates(self, tail: _LiveTail, done: int) -> None:
        for sub in list(tail.gated.values()):
            gate = sub.gate
            assert gate is not None
            for message in gate.advance(done):
                self._send(sub, message, None)
            if gate.open:
                self._ungate(tail, sub)

    @staticmethod
    def _ungate(tail: _LiveTail, sub: _Subscription) -> None:
        sub.gate = None
        tail.gated.pop(sub.id, None)

    def _decode(self, table: Table, entry: StreamEntry) -> tuple[bytes, dict[str, Any] | None]:
        """An entry as the encoded event clients get, and its data as Python values for the
        filters (None when it does not fit the table's definition: no filter matches it)."""
        event = self._event(table.name, entry)
        try:
            data = {k: table.from_json(k, v) for k, v in event.data.items() if k in table.columns}
        except (TypeError, ValueError):
            log.warning("a change to %s does not match its table definition", table.name)
            data = None
        return encode(event.to_json()), data

    async def _subscribe_command(self, conn: Connection, command: Subscribe) -> None:
        rid = command.request_id
        if not await self._allowed(conn, command.table):
            raise ProtocolError(
                ErrorCode.NOT_PERMITTED,
                f"no table {command.table!r}, or not permitted",
                request_id=rid,
            )
        table = self._tables[command.table]
        limit = self.manager.options.max_subscriptions_per_connection
        if limit is not None and len(self._by_conn.get(conn.id, ())) >= limit:
            raise ProtocolError(
                ErrorCode.LIMIT_EXCEEDED,
                f"at most {limit} subscriptions per connection",
                request_id=rid,
            )
        row_filter = parse_filters(command.filters, table, request_id=rid)
        tail = await self._live_tail(table)
        if conn.id not in self.manager.connections:
            return  # it closed meanwhile
        sid = secrets.token_hex(8)
        prefix = encode({"type": "data_update", "table": table.name, "subscription": sid})
        sub = _Subscription(sid, conn, table.name, row_filter, prefix[:-1] + b',"event":')
        cursor = tail.cursor
        assert cursor is not None
        epoch, registered, frontier = cursor.epoch, cursor.done, cursor.settled_upto
        reply = protocol_reply("subscribed", rid, subscription=sid, table=table.name)
        since = command.since
        self._by_conn.setdefault(conn.id, {})[sid] = sub
        tail.subscriptions[sid] = sub
        if since is None and frontier <= registered:
            # The common case: live from the tail's position, nothing to read first. No await
            # between registering and the reply: nothing handed out in between.
            reply["position"] = StreamPosition(registered, epoch).to_json()
            conn.send_encoded(OutboundMessage(encode(reply)))
            await trio.lowlevel.checkpoint()
            return
        # Join a replay to the live tail: every offset after the start once, in order. The
        # start is `since` (in this epoch), or the tail's position: then the replay brings the
        # entries the tail passes silently above a hole still open when it started.
        start = since.offset if since is not None and since.epoch == epoch else registered
        gate = ReplayGate[OutboundMessage](start, registered)
        sub.gate = gate
        tail.gated[sid] = sub
        try:
            result = await self._recover_changes(table, since, registered, frontier, epoch)
            if since is not None and start > frontier:
                # A client ahead of this server's tail (it was on a faster one) gets nothing
                # twice; but no position past the stream's head was ever handed out.
                head = await self.store.head(_stream(table.name))
                if head is not None and head.position.epoch == epoch:
                    gate.after = min(start, max(head.position.offset, registered))
        except Exception:
            log.exception("replay for a subscription to %s failed", table.name)
            result = Recovery([], StreamPosition(registered, epoch), "unavailable")
        if tail.subscriptions.get(sid) is not sub:
            return  # unsubscribed, or the connection closed, meanwhile
        if sub.gate is not gate:  # the stream's epoch changed meanwhile: live already
            result = Recovery([], StreamPosition(0, epoch), "epoch_changed")
            out: list[OutboundMessage] = []
        elif result.recovered:
            items = []
            for entry in result.entries:
                offset = entry.position.offset
                if entry.position.epoch != epoch or offset <= start or offset > frontier:
                    continue  # the tail hands out everything above its frontier
                event_json, data = self._decode(table, entry)
                matches = data is not None and row_filter.matches(data)
                items.append((offset, sub.frame(event_json) if matches else None))
            out = gate.replayed(items)
        else:
            out = gate.failed(registered)
        for message in out:
            self._send(sub, message, None)
        # Everything up to `position` went out (or is not this subscription's), nothing
        # above it did; the reply follows, with no await in between.
        if sub.gate is gate:
            position = StreamPosition(gate.after, epoch)
            if gate.open:
                self._ungate(tail, sub)
        else:
            assert tail.cursor is not None
            position = StreamPosition(tail.cursor.done, tail.cursor.epoch)
        if since is not None:
            reply["recovered"] = result.recovered
            if result.reason is not None:
                reply["reason"] = result.reason
        reply["position"] = position.to_json()
        conn.send_encoded(OutboundMessage(encode(reply)))
        await trio.lowlevel.checkpoint()

    async def _recover_changes(
        self,
        table: Table,
        since: StreamPosition | None,
        registered: int,
        frontier: int,
        epoch: str,
    ) -> Recovery:
        """The entries a subscription starting at `since` (None: at the tail's position
        `registered`) needs from the store, up to the tail's `frontier`."""
        stream = _stream(table.name)
        if since is None:  # only the entries the tail passes silently
            entries = await self.store.read(
                stream, epoch, registered, frontier - registered, upto=frontier
            )
            return Recovery(entries, StreamPosition(frontier, epoch))
        current = StreamPosition(frontier, epoch)
        result = await recover(self.store, stream, since, current, limit=self.recovery_limit)
        if result.reason == "retention" and since.offset > 0 and since.epoch == epoch:
            # `since` may be a position that was never written (a hole the tail skipped, a
            # reseed gap): if an entry before it is still kept, nothing after it has expired.
            before = await self.store.latest(stream, epoch, 1, before=since.offset)
            if before:
                result = await recover(
                    self.store, stream, before[0].position, current, limit=self.recovery_limit
                )
        return result

    def _drop(self, conn_id: str, sid: str) -> bool:
        sub = self._by_conn.get(conn_id, {}).pop(sid, None)
        if sub is None:
            return False
        if not self._by_conn[conn_id]:
            del self._by_conn[conn_id]
        tail = self._live.get(sub.table)
        if tail is not None:
            tail.subscriptions.pop(sid, None)
            tail.gated.pop(sid, None)
        return True

    async def _unsubscribe_command(self, conn: Connection, command: Unsubscribe) -> None:
        if not self._drop(conn.id, command.subscription):
            raise ProtocolError(
                ErrorCode.INVALID_FIELD,
                f"no subscription {command.subscription!r} on this connection",
                request_id=command.request_id,
            )
        await conn.send(
            protocol_reply("unsubscribed", command.request_id, subscription=command.subscription)
        )

    async def _on_disconnect(self, conn: Connection, code: int) -> None:
        for sid in list(self._by_conn.get(conn.id, {})):
            self._drop(conn.id, sid)
        await trio.lowlevel.checkpoint()

    def lag(self) -> float:
        """Seconds between the write and the delivery of the latest change handed out
        (0 when the tails are idle): the change-stream lag of WebSocketMetrics."""
        return self._lag

    def subscription_count(self) -> int:
        return sum(len(subs) for subs in self._by_conn.values())

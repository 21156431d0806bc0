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

The parts: `change_capture.py` (`ChangeLog`, nudges, `ChangePublisher`), `change_reader.py`
(cursors and tails), `change_subscriptions.py` (client subscriptions and live tails); this
module has `ChangeStreamManager` (which puts them together) and the watchers. Every public name
is importable from here, as before the split.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from .._core.checks import require_positive_ints, require_positive_numbers
from .._core.protocol import StreamPosition, Subscribe, Unsubscribe
from .change_capture import (
    OPERATIONS,
    ChangeEvent,
    ChangeLog,
    ChangePublisher,
    Nudges,
    nudge_channel,
    stream_name,
)
from .change_reader import RETRY_MAX, ChangeReader, change_event
from .change_subscriptions import Permission, TableSubscriptions
from .streams import (
    MemorySequencer,
    Sequencer,
    StreamCursor,
    StreamEntry,
    warn_memory_behind_broker,
)
from .watch_positions import WatchPositions

if TYPE_CHECKING:
    from ..cassandra import CdcSource, ChangeSource, Database, Table
    from ..cassandra._streams import CassandraStreamStore
    from .manager import WebSocketManager

__all__ = [
    "OPERATIONS",
    "RETRY_MAX",
    "ChangeEvent",
    "ChangeLog",
    "ChangePublisher",
    "ChangeStreamManager",
    "Permission",
    "Watch",
    "nudge_channel",
]

log = logging.getLogger("trio_rt.changes")


@dataclass(eq=False)
class Watch:
    """A server-side watcher (`ChangeStreamManager.watch`); `cancel()` stops it.

    `ready` is set once its start position is fixed (`watch()` waits for it when the manager
    is serving). `position` is where it has got to: every change at or below it was handed to
    the callback (or skipped as a hole, or predates the start); the next change it gets is
    the first one after it. A named watcher stores it after each batch; `saved` is the
    position it last stored (or loaded at its start): a restart resumes at or past `saved`,
    so what a ``kill -9`` repeats is at most what lies between `saved` and `position`.
    """

    table: str
    operations: frozenset[str]
    callback: Callable[[ChangeEvent], Awaitable[None]]
    name: str | None
    position: StreamPosition | None = None
    saved: StreamPosition | None = None
    ready: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    errors: int = 0

    def cancel(self) -> None:
        self.scope.cancel()


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
        from ..cassandra import CassandraStreamStore, CassandraWatchPositions, Outbox
        from ..cassandra._sources import install_source

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
        self.stats = {
            "changes": 0,
            "deliveries": 0,
            "skipped_holes": 0,
            "callback_errors": 0,
            "read_errors": 0,
            "from_memory": 0,
            "nudges": 0,
        }
        self._reader = ChangeReader(
            self.store,
            self.sequencer,
            self.stats,
            poll_interval=self.poll_interval,
            hole_timeout=self.hole_timeout,
            batch_size=batch_size,
            start_window=start_window,
        )
        self._subscriptions = TableSubscriptions(
            manager,
            self._reader,
            self.stats,
            has_permission=has_permission,
            recovery_limit=recovery_limit,
        )
        self._nudges = Nudges(manager.broker, nudge_channel(manager.options.channel_prefix))
        self.changelog = ChangeLog(
            self.store, self.sequencer, self._notify, remember=self._remember
        )
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
            remember=self._remember,
            tables=tables,
        )
        for table in tables:
            self.expose(table)
        self._nursery: trio.Nursery | None = None
        self._watches: list[Watch] = []
        manager.attach_change_streams(self)
        manager.add_command(Subscribe, self._subscriptions.subscribe)
        manager.add_command(Unsubscribe, self._subscriptions.unsubscribe)
        manager.on_disconnect(self._subscriptions.disconnected)
        cdc_run = self.cdc.run if self.cdc is not None else None
        for service in getattr(self.sequencer, "run", None), cdc_run, self.run:
            if service is not None:
                manager.add_service(service)

    def expose(self, table: Table) -> None:
        """Allow client subscriptions to `table` (subject to `has_permission`); with
        ``Cdc(tables=None)`` CDC records it too."""
        self._subscriptions.tables[table.name] = table
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
            self._nursery = self._subscriptions.nursery = nursery
            try:
                for watch in self._watches:
                    nursery.start_soon(self._run_watch, watch)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = self._subscriptions.nursery = None
                manager.stop_listening(channel)

    # -- nudges ---------------------------------------------------------------------------------
    def _notify(self, stream: str, offset: int) -> None:
        """A write through this server committed: wake local tails, tell the other servers."""
        self._reader.wake(stream, offset)
        self._nudges.add(stream, offset)

    def _remember(self, stream: str, entries: list[StreamEntry]) -> None:
        """Entries this server stored: local tails take them from memory, not a read-back."""
        self._reader.remember(stream, entries)

    def _on_nudge(self, data: bytes) -> None:
        nudge = self._nudges.decode(data)
        if nudge is not None:
            # Counted: none at all while other processes write means they publish on
            # another channel_prefix, and the tails wait for their polls.
            self.stats["nudges"] += 1
            self._reader.wake(*nudge)

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
        stream = stream_name(watch.table)
        name = watch.name
        with watch.scope:
            try:
                resume = None
                if name is not None:
                    key = name
                    resume = await self._reader.retrying(
                        f"loading watcher {name!r}'s position", lambda: self.positions.load(key)
                    )
                cursor = await self._reader.start_cursor(stream, resume)
                watch.position = StreamPosition(cursor.done, cursor.epoch)
                watch.saved = resume
            finally:
                watch.ready.set()

            async def save() -> None:
                position = watch.position
                if name is None or position is None or position == watch.saved:
                    return
                # Shielded and bounded: a stop must not lose the position of what was handed
                # out (a graceful restart would repeat it), nor hang on a dead store.
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    try:
                        await self.positions.save(name, position)
                        watch.saved = position
                    except Exception as exc:
                        log.warning("watcher %r: position not saved (%r)", name, exc)

            async def deliver(entries: list[StreamEntry], cursor: StreamCursor) -> None:
                try:
                    for entry in entries:
                        event = change_event(watch.table, entry)
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
                await self._reader.tail(stream, cursor, deliver, on_reset)
            finally:
                await save()

    def lag(self) -> float:
        """Seconds between the write and the delivery of the latest change handed out
        (0 when the tails are idle): the change-stream lag of WebSocketMetrics."""
        return self._reader.lag

    def subscription_count(self) -> int:
        return self._subscriptions.count()

"""ChangeStreamManager: Cassandra table changes pushed to server callbacks and to clients.

Cassandra has no change feed a client can read, so trio_rt records changes as it writes them:
`Database` (trio_rt.cassandra) writes each insert/update/delete and a change entry in one
logged batch (`ChangeLog`, the capture seam). The entry lands in the stream ``table:<name>``
of a `CassandraStreamStore` at a position taken from a `Sequencer` (`RedisSequencer` when
several processes write), with the batch's write timestamp taken from the same sequencer, so
position order is Cassandra's last-write-wins order.

Each server tails the streams it needs:

- a *watcher* (`watch`) is a server-side callback with its own cursor; a named watcher stores
  its position after each batch of changes, so a restarted server resumes where it stopped;
- the *live tail* of a table feeds every client subscription to it (`subscribe` messages).

Tails poll the store every `poll_interval` and are woken at once by this server's own writes
and, through the broker (Redis), by other servers' writes. A write that commits after writes
with greater offsets (a slow batch) leaves a hole; `StreamCursor` holds what is behind it
until it fills or `hole_timeout` passes, so changes are handed out in position order, each
once. Every task lives in the manager's nursery, under this component's own nursery.
"""

from __future__ import annotations

import inspect
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from ._filters import RowFilter, parse_filters
from ._manager import WebSocketManager
from ._options import require_positive_ints
from ._outbox import OutboundMessage
from ._protocol import ErrorCode, ProtocolError, StreamPosition, Subscribe, Unsubscribe, encode
from ._streams import (
    Allocation,
    MemorySequencer,
    Sequencer,
    StreamCursor,
    StreamEntry,
    recover,
    warn_memory_behind_broker,
)

if TYPE_CHECKING:
    from ._connection import Connection
    from .cassandra import CapturedWrite, Change, Database, Table
    from .cassandra._streams import CassandraStreamStore

__all__ = ["ChangeEvent", "ChangeLog", "ChangeStreamManager", "Watch"]

log = logging.getLogger("trio_rt.changes")

OPERATIONS = frozenset({"insert", "update", "delete"})
Permission = Callable[["Connection", str, str], "bool | Awaitable[bool]"]


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One change as watchers receive it. `key` and `data` hold JSON values (uuids and
    timestamps as strings), the same as clients get in ``data_update``."""

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


class ChangeLog:
    """The `ChangeCapture` given to `Database`: each write gets a position and a change entry
    in its own batch; committed writes wake the tails (`notify`)."""

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


@dataclass(eq=False)
class Watch:
    """A server-side watcher; `cancel()` stops it. `position` is where it has got to."""

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
    buffer: list[tuple[int, OutboundMessage]] | None = None  # while recovering

    def frame(self, event_json: bytes) -> OutboundMessage:
        """This subscription's ``data_update`` for an encoded event."""
        return OutboundMessage(self.prefix + event_json + b"}")


@dataclass(eq=False)
class _LiveTail:
    table: Table
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)
    cursor: StreamCursor | None = None
    ready: trio.Event = field(default_factory=trio.Event)


class ChangeStreamManager:
    """Change notifications for tables written through `db` (a `trio_rt.cassandra.Database`).

    `ChangeStreamManager(db, manager, store=..., sequencer=...)` installs its `ChangeLog` as
    the database's capture (unless it has one), adds the built-in ``subscribe`` /
    ``unsubscribe`` messages to `manager` and runs its tasks in the manager's nursery (it
    starts with the manager, or at once if the manager is serving).

    `tables` lists the tables clients may subscribe to (also: `expose`). `has_permission`
    (``(conn, table, "read") -> bool``, sync or async) runs before a subscription exists;
    by default the manager's `authorize(conn, "table:<name>", "read")` when it has one, else
    every table in `tables` is readable. A denied or unknown table gets the same
    ``not_permitted`` answer.

    `store` defaults to a `CassandraStreamStore` in the database's keyspace (call
    `create_schema()` first), `sequencer` to the store's memory sequencer: pass a
    `RedisSequencer` when several processes write.
    """

    def __init__(
        self,
        db: Database,
        manager: WebSocketManager,
        *,
        store: CassandraStreamStore | None = None,
        sequencer: Sequencer | None = None,
        tables: Iterable[Table] = (),
        has_permission: Permission | None = None,
        poll_interval: float = 0.5,
        hole_timeout: float = 10.0,
        batch_size: int = 500,
        recovery_limit: int = 1000,
        start_window: int = 1000,
    ) -> None:
        from .cassandra._streams import CassandraStreamStore

        if not poll_interval > 0 or not hole_timeout > 0:
            raise ValueError("poll_interval and hole_timeout must be positive")
        require_positive_ints(
            batch_size=batch_size, recovery_limit=recovery_limit, start_window=start_window
        )
        self.db = db
        self.manager = manager
        self.store = store if store is not None else CassandraStreamStore(db.session, db.keyspace)
        self.sequencer = sequencer if sequencer is not None else MemorySequencer()
        self.sequencer.attach(self.store)
        self.poll_interval = float(poll_interval)
        self.hole_timeout = float(hole_timeout)
        self.batch_size = batch_size
        self.recovery_limit = recovery_limit
        self.start_window = start_window
        self._tables: dict[str, Table] = {}  # exposed to client subscriptions
        for table in tables:
            self.expose(table)
        self.changelog = ChangeLog(self.store, self.sequencer, self._notify)
        if db.capture is None:
            db.capture = self.changelog
        self._has_permission = has_permission
        self._wakeups: dict[str, trio.Event] = {}
        # Per stream: a counter bumped by every nudge (a tail that was busy reading when one
        # came does not miss it), and the greatest offset a nudge announced.
        self._generation: dict[str, int] = {}
        self._announced: dict[str, int] = {}
        self._nudges: dict[str, int] = {}
        self._nudge_ready = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._watches: list[Watch] = []
        self._live: dict[str, _LiveTail] = {}
        self._by_conn: dict[str, dict[str, _Subscription]] = {}
        self._channel = f"{manager.options.channel_prefix}:changes"
        self._origin = secrets.token_hex(6).encode()
        self.stats = {"changes": 0, "deliveries": 0, "skipped_holes": 0, "callback_errors": 0}
        self._lag = 0.0
        manager._change_streams = self
        manager._set_builtin(Subscribe, self._subscribe_command)
        manager._set_builtin(Unsubscribe, self._unsubscribe_command)
        manager.on_disconnect(self._on_disconnect)
        for service in getattr(self.sequencer, "run", None), self.run:
            if service is not None:
                manager.add_service(service)

    def expose(self, table: Table) -> None:
        """Allow client subscriptions to `table` (subject to `has_permission`)."""
        self._tables[table.name] = table

    # -- lifecycle ------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The component's tasks: nudges in and out, watchers, live tails. Run by the manager."""
        manager = self.manager
        warn_memory_behind_broker(
            log, "ChangeStreamManager", manager.broker, self.sequencer, None, "RedisSequencer"
        )
        async with trio.open_nursery() as nursery:
            manager._on_channel(self._channel, self._on_nudge)
            await manager.broker.subscribe(self._channel)
            nursery.start_soon(self._publish_nudges)
            self._nursery = nursery
            try:
                for watch in self._watches:
                    nursery.start_soon(self._run_watch, watch)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None
                manager._channel_handlers.pop(self._channel, None)
                manager.broker.unsubscribe(self._channel)

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
        # Policy when writes outpace the publisher: coalesce, one nudge per stream carrying
        # the greatest offset.
        self._nudges[stream] = max(offset, self._nudges.get(stream, 0))
        self._nudge_ready.set()

    async def _publish_nudges(self) -> None:
        while True:
            await self._nudge_ready.wait()
            self._nudge_ready = trio.Event()
            nudges, self._nudges = self._nudges, {}
            for stream, offset in nudges.items():
                try:
                    await self.manager.broker.publish(
                        self._channel, b"%s\n%d\n%s" % (self._origin, offset, stream.encode())
                    )
                except Exception:
                    log.warning("could not publish a change nudge; others poll", exc_info=True)

    def _on_nudge(self, data: bytes) -> None:
        try:
            origin, offset, stream = data.split(b"\n", 2)
            announced = int(offset)
        except ValueError:
            log.warning("ignoring a malformed change nudge")
            return
        if origin != self._origin:
            self._wake(stream.decode("utf-8", "replace"), announced)

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

    # -- reading --------------------------------------------------------------------------------
    async def _start_cursor(self, stream: str, resume: StreamPosition | None) -> StreamCursor:
        """A cursor at `resume`, or after everything visible now (holes below still count)."""
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
        cursor.settle_existing(e.position.offset for e in seen)
        return cursor

    async def _tail(
        self,
        stream: str,
        cursor: StreamCursor,
        deliver: Callable[[list[StreamEntry]], Awaitable[None]],
    ) -> None:
        while True:
            generation = self._generation.get(stream, 0)
            upto = self._announced.get(stream, 0)
            if upto <= cursor.done:
                # A poll, not a nudge: the head says how far to read, and whether the
                # stream was reset (a new epoch); nothing past `done`, no read at all.
                head = await self.store.head(stream)
                upto = head.position.offset if head is not None else 0
                if head is not None and head.position.epoch != cursor.epoch:
                    log.warning("stream %s changed epoch: starting over", stream)
                    cursor = StreamCursor(head.position.epoch, 0, self.hole_timeout)
                    self._announced.pop(stream, None)
            entries = (
                await self.store.read(stream, cursor.epoch, cursor.done, self.batch_size, upto=upto)
                if upto > cursor.done
                else []
            )
            before = cursor.skipped
            ready = cursor.feed(entries, trio.current_time())
            if cursor.skipped != before:
                self.stats["skipped_holes"] += cursor.skipped - before
                log.warning(
                    "stream %s: %d position(s) never written within %.1f s, skipped",
                    stream,
                    cursor.skipped - before,
                    self.hole_timeout,
                )
            if ready:
                self.stats["changes"] += len(ready)
                self._lag = max(0.0, time.time() - ready[-1].timestamp / 1e6)
                await deliver(ready)
            elif not entries:
                self._lag = 0.0
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
        """Call ``await callback(event)`` for every change to `table` (of `operations`),
        in position order, each once, from the next change on (or, for a `name`d watcher with
        a stored position, from where it stopped).

        Callbacks of one watcher run one at a time in its own task: a slow callback delays
        only its watcher. An exception in the callback is logged and counted; the watcher
        goes on. Returns once the watcher's start position is fixed (or at once, if the
        manager is not serving yet: the watcher then starts with it).
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
        watch = Watch(table_name, ops, callback, name)
        self._watches.append(watch)
        if self._nursery is not None:
            self._nursery.start_soon(self._run_watch, watch)
            await watch.ready.wait()
        else:
            await trio.lowlevel.checkpoint()
        return watch

    async def _load_position(self, name: str) -> StreamPosition | None:
        rows = await self.db.session.execute(
            f"SELECT epoch, pos FROM {self.db.keyspace}.trio_rt_watch_positions WHERE name = ?",
            (name,),
        )
        return StreamPosition(rows[0]["pos"], rows[0]["epoch"]) if rows else None

    async def _save_position(self, name: str, position: StreamPosition) -> None:
        await self.db.session.execute(
            f"INSERT INTO {self.db.keyspace}.trio_rt_watch_positions (name, epoch, pos) "
            "VALUES (?, ?, ?)",
            (name, position.epoch, position.offset),
        )

    async def create_schema(self) -> None:
        """Create the stream tables and the watcher positions table (idempotent)."""
        await self.store.create_schema()
        await self.db.session.execute(
            f"CREATE TABLE IF NOT EXISTS {self.db.keyspace}.trio_rt_watch_positions ("
            "name text PRIMARY KEY, epoch text, pos bigint)"
        )

    async def _run_watch(self, watch: Watch) -> None:
        stream = _stream(watch.table)
        with watch.scope:
            try:
                resume = await self._load_position(watch.name) if watch.name else None
                cursor = await self._start_cursor(stream, resume)
                watch.position = StreamPosition(cursor.done, cursor.epoch)
            finally:
                watch.ready.set()

            async def deliver(entries: list[StreamEntry]) -> None:
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
                if watch.name is not None and watch.position is not None:
                    await self._save_position(watch.name, watch.position)

            await self._tail(stream, cursor, deliver)

    # -- client subscriptions -------------------------------------------------------------------
    async def _allowed(self, conn: Connection, table: str) -> bool:
        if table not in self._tables:
            return False
        check = self._has_permission
        if check is None:
            authorize = getattr(self.manager, "authorize", None)
            if authorize is None:
                return True
            return bool(await authorize(conn, f"table:{table}", "read"))
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
        cursor = tail.cursor

        async def deliver(entries: list[StreamEntry]) -> None:
            for entry in entries:
                self._fan_out(tail, entry)
            await trio.lowlevel.checkpoint()

        await self._tail(stream, cursor, deliver)

    def _fan_out(self, tail: _LiveTail, entry: StreamEntry) -> None:
        if not tail.subscriptions:
            return
        event_json, data = self._decode(tail.table, entry)
        cork = self.manager._flushes.begin()  # one decision for every recipient
        for sub in list(tail.subscriptions.values()):
            if data is None or not sub.filter.matches(data):
                continue
            message = sub.frame(event_json)
            self.stats["deliveries"] += 1
            if sub.buffer is not None:
                sub.buffer.append((entry.position.offset, message))
            else:
                sub.conn.send_encoded(message, cork)

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
        limit = getattr(self.manager.options, "max_subscriptions_per_connection", None)
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
        self._by_conn.setdefault(conn.id, {})[sid] = sub
        assert tail.cursor is not None
        position = StreamPosition(tail.cursor.done, tail.cursor.epoch)
        reply: dict[str, Any] = {"type": "subscribed", "subscription": sid, "table": table.name}
        if command.since is None:
            tail.subscriptions[sid] = sub  # from here on, every change after `position`
        else:
            sub.buffer = []
            tail.subscriptions[sid] = sub
            try:
                recovered, reason, position = await self._replay(
                    conn, sub, table, command.since, position
                )
            except Exception:
                log.exception("replay for a subscription to %s failed", table.name)
                recovered, reason = False, "unavailable"
                self._flush(sub, set())
            reply["recovered"] = recovered
            if reason is not None:
                reply["reason"] = reason
        reply["position"] = position.to_json()
        if rid is not None:
            reply["id"] = rid
        await conn.send(reply)

    async def _replay(
        self,
        conn: Connection,
        sub: _Subscription,
        table: Table,
        since: StreamPosition,
        live: StreamPosition,
    ) -> tuple[bool, str | None, StreamPosition]:
        stream = _stream(table.name)
        head = await self.store.head(stream)
        current = live
        if head is not None and head.position.epoch == live.epoch:
            current = StreamPosition(max(live.offset, head.position.offset), live.epoch)
        result = await recover(self.store, stream, since, current, limit=self.recovery_limit)
        sent: set[int] = set()
        if result.recovered:
            for entry in result.entries:
                event_json, data = self._decode(table, entry)
                sent.add(entry.position.offset)
                if data is not None and sub.filter.matches(data):
                    conn.send_encoded(sub.frame(event_json))
        self._flush(sub, sent)
        last = max(sent) if sent else since.offset
        position = (
            result.position
            if not result.recovered
            else StreamPosition(max(last, live.offset), current.epoch)
        )
        return result.recovered, result.reason, position

    @staticmethod
    def _flush(sub: _Subscription, already_sent: set[int]) -> None:
        buffer, sub.buffer = sub.buffer or [], None
        for offset, message in buffer:
            if offset not in already_sent:
                sub.conn.send_encoded(message)

    def _drop(self, conn_id: str, sid: str) -> bool:
        sub = self._by_conn.get(conn_id, {}).pop(sid, None)
        if sub is None:
            return False
        if not self._by_conn[conn_id]:
            del self._by_conn[conn_id]
        tail = self._live.get(sub.table)
        if tail is not None:
            tail.subscriptions.pop(sid, None)
        return True

    async def _unsubscribe_command(self, conn: Connection, command: Unsubscribe) -> None:
        if not self._drop(conn.id, command.subscription):
            raise ProtocolError(
                ErrorCode.INVALID_FIELD,
                f"no subscription {command.subscription!r} on this connection",
                request_id=command.request_id,
            )
        reply: dict[str, Any] = {"type": "unsubscribed", "subscription": command.subscription}
        if command.request_id is not None:
            reply["id"] = command.request_id
        await conn.send(reply)

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

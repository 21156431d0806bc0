"""Client subscriptions to tables: ``subscribe`` / ``unsubscribe`` and the live tails.

One live tail per subscribed table (a `ChangeReader.tail` in the change streams' nursery)
fans each change out to the subscriptions whose filter it matches. A subscription with
``since`` (or one opened while the tail holds entries behind a hole) is joined to the live
tail by a `ReplayGate`: the replay from the store and the live changes, each offset once, in
order. `ChangeStreamManager` (`changes.py`) registers the commands and sets `nursery` while
it runs.
"""

from __future__ import annotations

import inspect
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from .._core.filters import RowFilter, parse_filters
from .._core.outbox import OutboundMessage
from .._core.protocol import (
    ErrorCode,
    ProtocolError,
    StreamPosition,
    Subscribe,
    Unsubscribe,
    encode,
)
from .._core.protocol import reply as protocol_reply
from .._core.replay_gate import ReplayGate
from .change_capture import stream_name
from .change_reader import ChangeReader, change_event
from .streams import Recovery, StreamCursor, StreamEntry, recover

if TYPE_CHECKING:
    from ..cassandra import Table
    from .connection import Connection
    from .manager import WebSocketManager

__all__ = ["Permission", "TableSubscriptions"]

log = logging.getLogger("trio_rt.changes")

Permission = Callable[["Connection", str, str], "bool | Awaitable[bool]"]


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


class TableSubscriptions:
    """The client subscriptions of one server (see the module docstring).

    `tables` are the tables clients may subscribe to (name -> definition); `has_permission`
    (``(conn, table, "read") -> bool``, sync or async) or, without it, the manager's
    `authorize(conn, "table:<name>", "read")` decides before a subscription exists.
    Deliveries are counted in `stats` (the change streams' dict)."""

    def __init__(
        self,
        manager: WebSocketManager,
        reader: ChangeReader,
        stats: dict[str, int],
        *,
        has_permission: Permission | None,
        recovery_limit: int,
    ) -> None:
        self.manager = manager
        self.stats = stats
        self.tables: dict[str, Table] = {}
        self.recovery_limit = recovery_limit
        self.nursery: trio.Nursery | None = None  # the change streams' own, while they run
        self._reader = reader
        self._has_permission = has_permission
        self._live: dict[str, _LiveTail] = {}
        self._by_conn: dict[str, dict[str, _Subscription]] = {}

    async def _allowed(self, conn: Connection, table: str) -> bool:
        if table not in self.tables:
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
            if self.nursery is None:
                raise RuntimeError("the change streams are not running")
            tail = self._live[table.name] = _LiveTail(table)
            self.nursery.start_soon(self._run_live, tail)
        await tail.ready.wait()
        return tail

    async def _run_live(self, tail: _LiveTail) -> None:
        stream = stream_name(tail.table.name)
        try:
            tail.cursor = await self._reader.start_cursor(stream, None)
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

        await self._reader.tail(stream, tail.cursor, deliver, on_reset)

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
        event = change_event(table.name, entry)
        try:
            data = {k: table.from_json(k, v) for k, v in event.data.items() if k in table.columns}
        except (TypeError, ValueError):
            log.warning("a change to %s does not match its table definition", table.name)
            data = None
        return encode(event.to_json()), data

    async def subscribe(self, conn: Connection, command: Subscribe) -> None:
        rid = command.request_id
        if not await self._allowed(conn, command.table):
            raise ProtocolError(
                ErrorCode.NOT_PERMITTED,
                f"no table {command.table!r}, or not permitted",
                request_id=rid,
            )
        table = self.tables[command.table]
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
                head = await self._reader.store.head(stream_name(table.name))
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
        stream = stream_name(table.name)
        store = self._reader.store
        if since is None:  # only the entries the tail passes silently
            entries = await store.read(
                stream, epoch, registered, frontier - registered, upto=frontier
            )
            return Recovery(entries, StreamPosition(frontier, epoch))
        current = StreamPosition(frontier, epoch)
        result = await recover(store, stream, since, current, limit=self.recovery_limit)
        if result.reason == "retention" and since.offset > 0 and since.epoch == epoch:
            # `since` may be a position that was never written (a hole the tail skipped, a
            # reseed gap): if an entry before it is still kept, nothing after it has expired.
            before = await store.latest(stream, epoch, 1, before=since.offset)
            if before:
                result = await recover(
                    store,
                    stream,
                    before[0].position,
                    current,
                    limit=self.recovery_limit,
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

    async def unsubscribe(self, conn: Connection, command: Unsubscribe) -> None:
        if not self._drop(conn.id, command.subscription):
            raise ProtocolError(
                ErrorCode.INVALID_FIELD,
                f"no subscription {command.subscription!r} on this connection",
                request_id=command.request_id,
            )
        await conn.send(
            protocol_reply("unsubscribed", command.request_id, subscription=command.subscription)
        )

    async def disconnected(self, conn: Connection, code: int) -> None:
        for sid in list(self._by_conn.get(conn.id, {})):
            self._drop(conn.id, sid)
        await trio.lowlevel.checkpoint()

    def count(self) -> int:
        """Subscriptions open on this server."""
        return sum(len(subs) for subs in self._by_conn.values())

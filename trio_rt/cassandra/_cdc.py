"""Cassandra's own CDC as a change source: changes from the CDC agents into the streams.

`CdcSource` connects to the CDC agent beside each node (``trio_rt.cdc``; docs/cdc.md) and
stores every change of the tables it is given in the stream ``table:<name>``, the same
stream the outbox (`ChangeLog`) writes: positions from the same `Sequencer`, entries in the
same `CassandraStreamStore`, payloads in the same JSON shape. Watchers, subscriptions,
filters and ``since`` recovery read them unchanged.

Per agent batch, in the agent's (commit-log) order:

1. each change becomes a stream entry: operation, key and data as the table's JSON values,
   plus ``source``, ``ts`` (the write timestamp), ``ttl`` and, for a range deletion, its
   bounds; for a ``capture_full_rows`` table the row is read (one read per change, before
   its entry is written) and the change carries it merged with what was written;
2. each change is *claimed* by its `change_id` (table, kind, write timestamp, key) with a
   lightweight transaction in ``trio_rt_cdc_claims`` (one conditional batch for the claims
   of a batch that share a partition: one stream, 10 s of write time): with several
   replicas, every replica's agent reports the same mutation, and the first claim wins; the
   others are duplicates. With ``single_reporter`` the claims are read instead, and with no
   outbox claims either (``outbox_claims=False``) not even read for a batch that starts past
   the agent's ``resend_until`` (it was never sent before): only re-sent batches are checked.
   A claim is owned by the node whose agent reported it: a consumer that stops between claim
   and store leaves the claim without a position, and the same node's changes (re-sent from
   its checkpoint) complete it. Writes through the outbox are claimed by the outbox
   (`OutboxClaims`) before they are written, so CDC skips them;
3. positions are allocated in order, and each entry is written in the same logged batch as
   its claim's position (so "claimed and stored" is one fact; a few entries per batch);
4. `notify(stream, offset)` wakes the tails, then the batch is acknowledged to the agent,
   which only then moves its durable checkpoint.

Steps 1-2 run one batch after the other; step 3 of a batch overlaps the next batches' steps
1-2 (`_Pipeline`); acknowledgements go in order.

A failure (Cassandra unreachable, a bad message) drops the connection: the agent sends the
unacknowledged batches again to the next connection, and the claims make that idempotent. An
entry batch once begun is seen through (shielded from that cancellation, written again after
a timeout for up to `STORE_RETRY_FOR`): an abandoned request could land after the readers
skipped its positions. A change whose entry batch failed anyway gets the same position again
when re-sent soon (`REUSE_POSITION_FOR`): the failed request, should Cassandra still apply
it, writes the same row.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from .._core.checks import require_positive_ints, require_positive_numbers
from .._engine.streams import Allocation, Sequencer, StreamEntry
from ..cdc._wire import (
    AgentBatch,
    AgentHello,
    AgentRefused,
    AgentStats,
    CdcChange,
    LineReader,
    WireError,
    change_id,
    encode_ack,
    parse_message,
)
from ._cdc_claims import CdcClaims, Claim, OutboxClaims, _stream
from ._database import Database
from ._errors import CassandraTimeout
from ._session import CassandraSession, Params
from ._streams import CassandraStreamStore
from ._table import Table

__all__ = ["CdcClaims", "CdcSource", "Claim", "OutboxClaims"]

log = logging.getLogger("trio_rt.cdc")


#: What one logged batch of entries holds at most: payload bytes (Cassandra warns about a
#: batch over ``batch_size_warn_threshold``, 5 KiB by default, and refuses one over 50 KiB)
#: and changes.
STORE_CHUNK_BYTES = 3 * 1024
STORE_CHUNK_ITEMS = 32

#: How long a change's position is kept for a re-send when its store did not finish (the
#: connection dropped while the request was out): the re-send writes the same entry row, so
#: a cancelled request that Cassandra still applies later lands on it instead of adding a
#: second entry. Far below the readers' `hole_timeout` (10 s by default), after which a tail
#: skips the position: the re-sent store must land before any tail gives up on it, or tails
#: that skipped it miss what the others deliver. At 5 s a re-send after an agent restart
#: (2-6 s) sometimes reused a position whose store, behind the restart's backlog on a busy
#: machine, landed after one tail had skipped it (CI, December 4). A request the dropped
#: connection sent is applied within Cassandra's write timeout (2 s), so a later re-send
#: gets a new position and leaves a hole that every tail skips alike.
REUSE_POSITION_FOR = 2.0

#: How long an entry batch that timed out is written again (unchanged: the same rows with the
#: same write time, so idempotent) before the batch fails. A logged batch that timed out may
#: still be applied: Cassandra's batchlog replays it 4-14 s later, which can be after the
#: readers' `hole_timeout` (10 s) skipped its positions, and then the change is lost to them
#: while its claim says it is stored. Written again at once, it is there before they give up.
STORE_RETRY_FOR = 6.0


@dataclass
class _Item:
    change: CdcChange
    table: Table
    stream: str
    claim: Claim
    key: dict[str, Any]
    data: dict[str, Any]
    extra: dict[str, Any]
    operation: str
    owned: bool = False
    allocation: Allocation | None = None


class CdcSource:
    """Changes from the CDC agents (``agents``: ``"host:port"`` of each node's agent) into
    the streams ``table:<name>`` of `store`, at positions from `sequencer`.

    Only the `tables` given (their definitions) in `keyspace` are recorded; changes to other
    tables are acknowledged and counted as ``ignored``. A column the definition lacks is
    left out of the change (counted). `notify(stream, offset)` is called after each batch is
    stored (a `ChangeStreamManager` passes what wakes its tails and nudges the other
    servers). The node named in claims is what the agent says in its hello.

    `single_reporter=True`: every change is reported by ONE agent (one node, or replication
    factor 1): claims are then read (one read per batch) instead of taken with lightweight
    transactions, which is cheaper (docs/cdc.md "What it costs"). With several replicas'
    agents it would store a change once per replica. With `outbox_claims=False` too (no
    process claims writes to these tables for the outbox: ``Cdc(outbox=False)``), a batch
    that starts past the agent's ``resend_until`` (nothing was sent from there before) is
    stored without reading claims at all: only re-sent batches are checked. `concurrency`
    bounds the requests in flight (lightweight transactions, row reads, entry batches).

    Run it with ``await nursery.start(source.run)``: one task per agent, reconnecting with a
    growing pause (`reconnect_delay` up to 5 s) while the agent is not there; `run` returns
    only when cancelled. The sequencer's own I/O (``RedisSequencer.run``) must be running.
    Call `create_schema()` once (the claims table; idempotent).
    """

    def __init__(
        self,
        session: CassandraSession,
        keyspace: str,
        *,
        agents: Sequence[str],
        tables: Iterable[Table],
        store: CassandraStreamStore,
        sequencer: Sequencer,
        claims: CdcClaims | None = None,
        notify: Callable[[str, int], None] | None = None,
        remember: Callable[[str, list[StreamEntry]], None] | None = None,
        concurrency: int = 32,
        reconnect_delay: float = 0.2,
        single_reporter: bool = False,
        outbox_claims: bool = True,
    ) -> None:
        require_positive_ints(concurrency=concurrency)
        require_positive_numbers(reconnect_delay=reconnect_delay)
        self.session = session
        self.keyspace = keyspace
        self.agents = [_address(a) for a in agents]
        self.tables = {t.name: t for t in tables}
        self.store = store
        self.sequencer = sequencer
        if sequencer.store is None:
            sequencer.attach(store)
        self.claims = (
            claims
            if claims is not None
            else CdcClaims(session, keyspace, retention=store.retention)
        )
        self.notify = notify
        self.remember = remember
        self.single_reporter = bool(single_reporter)
        self.outbox_claims = bool(outbox_claims)
        self.db = Database(session, keyspace)
        self._limit = trio.CapacityLimiter(concurrency)
        self.reconnect_delay = float(reconnect_delay)
        self.stats: dict[str, int] = {
            "batches": 0,
            "changes": 0,
            "stored": 0,
            "duplicates": 0,
            "ignored": 0,
            "unknown_columns": 0,
            "bad_changes": 0,
            "row_reads": 0,
            "connection_errors": 0,
            "claim_free_batches": 0,
            "store_retries": 0,
        }
        #: The last stats message of each agent ("host:port" -> AgentStats).
        self.agent_stats: dict[str, AgentStats] = {}
        #: Seconds from the write timestamp to the entry stored, of the last change stored.
        self.lag = 0.0
        self._connected: dict[str, trio.Event] = {}
        #: Change id -> (when, allocation) of each change between its allocation and its
        #: entry stored (`REUSE_POSITION_FOR`).
        self._unsettled: dict[str, tuple[float, Allocation]] = {}
        #: When a list (a benchmark sets one): per batch, the write timestamps (µs) of its
        #: changes and the wall-clock time of each step ("received", "claimed",
        #: "positioned", "stored", "acked").
        self.profile: list[tuple[list[int], dict[str, float]]] | None = None
        #: True when `ChangeStreamManager` adds its tables (``Cdc(tables=None)``).
        self.follows_manager = False

    def track(self, table: Table) -> None:
        """Record the changes of `table` too, from the next batch on (a table already
        recorded keeps its definition)."""
        self.tables.setdefault(table.name, table)

    @property
    def cdc_tables(self) -> frozenset[str]:
        """The tables this source records (what `OutboxClaims` claims for)."""
        return frozenset(self.tables)

    async def create_schema(self) -> None:
        await self.claims.create_schema()

    def alerting(self) -> list[str]:
        """The agents whose ``cdc_raw`` is past their alert threshold."""
        return [name for name, stats in self.agent_stats.items() if stats.alert]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow every agent until cancelled (started at once; connecting happens after)."""
        async with trio.open_nursery() as nursery:
            for host, port in self.agents:
                nursery.start_soon(self._follow, host, port)
            task_status.started()

    async def wait_connected(self, agent: str | None = None) -> None:
        """Until the agent (by default every agent) has greeted this source once."""
        names = [f"{h}:{p}" for h, p in self.agents] if agent is None else [agent]
        for name in names:
            await self._connected.setdefault(name, trio.Event()).wait()

    async def _follow(self, host: str, port: int) -> None:
        name = f"{host}:{port}"
        pause = self.reconnect_delay
        while True:
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError as exc:
                log.debug("CDC agent %s not reachable (%r)", name, exc)
                await trio.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            try:
                async with stream:
                    await self._session(name, stream)
                    pause = self.reconnect_delay
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.info("connection to CDC agent %s ended (%r)", name, exc)
            except Exception:
                self.stats["connection_errors"] += 1
                log.exception(
                    "CDC from %s failed; reconnecting (unacknowledged changes come again)", name
                )
            await trio.sleep(pause)
            pause = min(pause * 2, 5.0)

    async def _session(self, name: str, stream: trio.SocketStream) -> None:
        """One connection: batches go through the pipeline (`_Pipeline`) while the next ones
        are read; acknowledgements go back in order. Returns when the agent closes; any
        failure cancels the batches in flight (none of them is acknowledged)."""
        lines = LineReader()
        node: str | None = None
        # Where the next batch starts, and how far batches may have been sent before: a
        # batch that starts there or later holds no change stored before.
        start: tuple[int, int] = (0, 0)
        resend_until: tuple[int, int] | None = None
        async with trio.open_nursery() as nursery:
            pipeline = _Pipeline(
                stream,
                claim=self._claim,
                allocate=self._allocate,
                store=self._store_batch,
                claims_are_reads=self.single_reporter,
                profile=lambda: self.profile,
            )
            nursery.start_soon(pipeline.acknowledge)
            while True:
                data = await stream.receive_some(1 << 16)
                if not data:
                    log.info("CDC agent %s closed the connection", name)
                    nursery.cancel_scope.cancel()
                    return
                for line in lines.feed(data):
                    message = parse_message(line)
                    if isinstance(message, AgentBatch):
                        if node is None:
                            raise WireError("a batch before the hello")
                        fresh = resend_until is not None and start >= resend_until
                        start = (message.segment, message.position)
                        await pipeline.add(nursery, node, message, fresh)
                    elif isinstance(message, AgentStats):
                        before = self.agent_stats.get(name)
                        skipped = message.skipped_undecodable - (
                            before.skipped_undecodable if before is not None else 0
                        )
                        if skipped > 0:
                            log.error(
                                "CDC agent %s skipped %d mutation(s) it could not decode: their "
                                "changes are lost (the agent's log says which)",
                                name,
                                skipped,
                            )
                        self.agent_stats[name] = message
                    elif isinstance(message, AgentHello):
                        node = message.node
                        resend_until = message.resend_until
                        checkpoint = message.checkpoint
                        start = (
                            int(checkpoint.get("segment", 0)),
                            int(checkpoint.get("position", 0)),
                        )
                        log.info(
                            "CDC agent %s (node %s, Cassandra %s) connected",
                            name,
                            node,
                            message.cassandra,
                        )
                        self._connected.setdefault(name, trio.Event()).set()
                    elif isinstance(message, AgentRefused):
                        log.warning("CDC agent %s refused this consumer: %s", name, message.message)
                        nursery.cancel_scope.cancel()
                        return

    # -- one batch --------------------------------------------------------------------------
    async def ingest(self, node: str, batch: AgentBatch) -> None:
        """Store the changes of one agent batch (claims, positions, entries), then notify;
        returns once all of it is stored (then the batch may be acknowledged). Raises what
        the session raises (a timed-out entry batch only after `STORE_RETRY_FOR` of writing
        it again): nothing is acknowledged then, the agent sends it again. Cancelled while
        its entries are being written, it waits for them (and notifies) first. (A
        connection runs these steps for several batches at once: `_Pipeline`.)"""
        items = await self._claim_and_allocate(node, batch)
        await self._store_batch(node, items)

    def _items(self, batch: AgentBatch) -> list[_Item]:
        self.stats["batches"] += 1
        items: list[_Item] = []
        for change in batch.changes:
            self.stats["changes"] += 1
            table = self.tables.get(change.table)
            if change.keyspace != self.keyspace or table is None:
                self.stats["ignored"] += 1
                continue
            try:
                items.append(self._item(table, change))
            except (TypeError, ValueError) as exc:
                self.stats["bad_changes"] += 1
                log.warning(
                    "a CDC change to %s does not fit its definition (%s): skipped", table.name, exc
                )
        return items

    async def _claim_and_allocate(self, node: str, batch: AgentBatch) -> list[_Item]:
        """Steps 1 and 2: `_claim`, then `_allocate`."""
        items = await self._claim(node, batch)
        await self._allocate(items)
        return items

    async def _claim(self, node: str, batch: AgentBatch, fresh: bool = False) -> list[_Item]:
        """Step 1: the batch's changes as items, claimed (`item.owned`): one conditional
        batch per claims partition (batches one after the other, so that they do not
        contend for it), or with `single_reporter` one read per partition (any order), or
        nothing at all for a `fresh` batch (never sent before) of a single reporter whose
        tables have no outbox claims."""
        items = self._items(batch)
        if not items:
            await trio.lowlevel.checkpoint()
            return items
        if fresh and self.single_reporter and not self.outbox_claims:
            # Nobody else stores these changes and nothing of this batch was sent before:
            # its claims can only be absent. They are still written with the entries (what
            # a later re-send of the batch is checked against).
            self.stats["claim_free_batches"] += 1
            for item in items:
                item.owned = True
            await trio.lowlevel.checkpoint()
            return items
        claims = [item.claim for item in items]
        if self.single_reporter:
            owned = await self.claims.check_many(claims, node)
        else:
            owned = await self.claims.claim_many(claims, node)
        for item, mine in zip(items, owned, strict=True):
            item.owned = mine
        self.stats["duplicates"] += owned.count(False)
        return items

    async def _allocate(self, items: list[_Item]) -> None:
        """Step 2 (one batch after the other, in the agent's order): positions for the owned
        changes in commit-log order, what keeps each table's stream in that order."""
        now = time.monotonic()
        unsettled = self._unsettled
        if len(unsettled) > 10_000:  # abandoned for good (e.g. found stored by a re-send)
            for ident, (when, _) in list(unsettled.items()):
                if now - when > REUSE_POSITION_FOR:
                    del unsettled[ident]
        for item in items:
            if not item.owned:
                unsettled.pop(item.claim.change, None)
                continue
            earlier = unsettled.get(item.claim.change)
            if earlier is not None and now - earlier[0] <= REUSE_POSITION_FOR:
                # Its store was cut off: the same row again (idempotent with a request of
                # the dropped connection that Cassandra may still apply), in the same order.
                item.allocation = earlier[1]
            else:
                item.allocation = await self.sequencer.next(item.stream)
                unsettled[item.claim.change] = (now, item.allocation)
        await trio.lowlevel.checkpoint()

    async def _store_batch(self, node: str, items: list[_Item]) -> None:
        """Step 3 (concurrently with other batches): full rows where the table wants them,
        then the owned changes' entries with their claims' positions in logged batches (a
        few changes each); then `notify`. Entries of a later batch may land first: the
        readers' cursors hold them until the earlier ones are there."""
        owned = [item for item in items if item.owned]
        if not owned:
            await trio.lowlevel.checkpoint()
            return
        full = [
            item for item in owned if item.table.capture_full_rows and item.operation != "delete"
        ]
        if full:

            async def read(item: _Item) -> None:
                async with self._limit:
                    await self._full_row(item)

            async with trio.open_nursery() as nursery:
                for item in full:
                    nursery.start_soon(read, item)
        chunks: list[list[tuple[str, Params]]] = []
        stamps: list[int] = []
        size = STORE_CHUNK_BYTES  # start a chunk with the first item
        heads: dict[str, tuple[str, Params]] = {}

        def close_chunk() -> None:
            if chunks:
                chunks[-1].extend(heads.values())  # the last entry's head per stream
            heads.clear()

        stored: dict[str, list[StreamEntry]] = {}
        for item in owned:
            allocation = item.allocation
            assert allocation is not None
            payload = json.dumps(
                {"operation": item.operation, "key": item.key, "data": item.data, **item.extra},
                separators=(",", ":"),
                ensure_ascii=False,
            )
            if size + len(payload) > STORE_CHUNK_BYTES or len(chunks[-1]) >= STORE_CHUNK_ITEMS:
                close_chunk()
                chunks.append([])
                stamps.append(0)
                size = 0
            size += len(payload)
            stored.setdefault(item.stream, []).append(
                StreamEntry(allocation.position, allocation.timestamp, payload)
            )
            entry, head = self.store.append_statements(item.stream, allocation, payload)
            chunks[-1] += [entry, self.claims.record(item.claim, node, allocation)]
            heads[item.stream] = head
            stamps[-1] = max(stamps[-1], allocation.timestamp)
        close_chunk()

        async def store(statements: list[tuple[str, Params]], timestamp: int) -> None:
            async with self._limit:
                await self._store_chunk(statements, timestamp)

        # Seen through once begun, even when the connection drops or the source is cancelled
        # meanwhile: a request abandoned in flight may be applied any time later (after the
        # readers skipped its positions, or after a re-send stored the change elsewhere).
        # Bounded by the session's request_timeout and STORE_RETRY_FOR.
        with trio.CancelScope(shield=True):
            if len(chunks) == 1:
                await store(chunks[0], stamps[0])
            else:
                async with trio.open_nursery() as nursery:
                    for statements, timestamp in zip(chunks, stamps, strict=True):
                        nursery.start_soon(store, statements, timestamp)
            self._stored(owned, stored)

    async def _store_chunk(self, statements: list[tuple[str, Params]], timestamp: int) -> None:
        """One logged batch of entries, their claims' positions and heads; after a timeout
        the same batch again, for up to `STORE_RETRY_FOR` s, then `CassandraTimeout`."""
        first = trio.current_time()
        while True:
            try:
                await self.session.execute_batch(statements, timestamp=timestamp)
                return
            except CassandraTimeout as exc:
                if trio.current_time() - first >= STORE_RETRY_FOR:
                    raise
                self.stats["store_retries"] += 1
                log.warning("storing CDC entries timed out (%s): writing them again", exc)

    def _stored(self, owned: list[_Item], stored: dict[str, list[StreamEntry]]) -> None:
        """A batch's entries are stored: forget their pending positions, count, wake."""
        latest: dict[str, int] = {}
        for item in owned:
            assert item.allocation is not None
            latest[item.stream] = max(latest.get(item.stream, 0), item.allocation.position.offset)
        for item in owned:
            self._unsettled.pop(item.claim.change, None)
        self.stats["stored"] += len(owned)
        self.lag = max(0.0, time.time() - owned[-1].change.ts / 1e6)
        if self.remember is not None:
            # Their payloads are known: this process's tails need not read them back.
            for stream, entries in stored.items():
                self.remember(stream, entries)
        if self.notify is not None:
            for stream, offset in latest.items():
                self.notify(stream, offset)

    def _values(self, table: Table, values: dict[str, Any]) -> dict[str, Any]:
        """JSON values from the agent, checked against the definition, as the table's JSON
        (what the outbox stores); columns the definition lacks are left out."""
        known = {}
        for column, value in values.items():
            if column not in table.columns:
                self.stats["unknown_columns"] += 1
                continue
            known[column] = table.from_json(column, value)
        return table.to_json(known)

    def _item(self, table: Table, change: CdcChange) -> _Item:
        key = self._values(table, change.key)
        extra: dict[str, Any] = {"source": "cdc", "ts": change.ts}
        if change.ttl is not None:
            extra["ttl"] = change.ttl
        bounds: dict[str, Any] | None = None
        if change.op == "range_delete" and change.range is not None:
            bounds = change.range
            start, end = bounds.get("start", {}), bounds.get("end", {})
            if (
                start.get("values") == end.get("values")
                and start.get("inclusive")
                and end.get("inclusive")
            ):
                # A deletion by a clustering prefix (``WHERE pk = ? AND ck1 = ?``): the
                # prefix is part of the key.
                key.update(self._values(table, start.get("values") or {}))
            extra["range"] = bounds
        if change.op == "partition_delete":
            extra["scope"] = "partition"
        elif change.op == "range_delete":
            extra["scope"] = "range"
        elif change.static:
            extra["scope"] = "static"
        operation: str
        if change.op in ("insert", "update"):
            operation = change.op
            data = {**key, **self._values(table, change.cells)}
            if change.partial:
                extra["partial"] = sorted(change.partial)
        else:
            operation = "delete"
            data = dict(key)
        stream = _stream(table.name)
        ident = change_id(change.keyspace, change.table, change.kind, change.ts, key, bounds)
        return _Item(
            change, table, stream, Claim(stream, ident, change.ts), key, data, extra, operation
        )

    async def _full_row(self, item: _Item) -> None:
        """`capture_full_rows`: the row as read now, with what the change wrote on top."""
        table = item.table
        if len(item.data) == len(table.columns) and "partial" not in item.extra:
            return  # the change wrote every column
        self.stats["row_reads"] += 1
        try:
            python_key = {c: table.from_json(c, v) for c, v in item.key.items()}
            row = await self.db.get(table, python_key)
        except ValueError:
            return  # a static row or a prefix: no single row to read
        if row is None:
            return
        current = table.to_json({k: v for k, v in row.items() if k in table.columns})
        written = {k: v for k, v in item.data.items() if k not in item.extra.get("partial", ())}
        item.data = {**current, **written}


class _Pipeline:
    """The batches of one connection in flight at once (at most the agent's window, and
    `DEPTH` here): each is claimed (once the batch before it has its positions, so that
    batches do not contend for a claims partition; at once with `single_reporter`, whose
    claims are reads), gets its positions once the batch before it has them (so positions
    follow the agent's order), is stored while the next ones are claimed, and is
    acknowledged once it and every batch before it are stored.

    Overflow policy: `add` waits while `DEPTH` batches are in flight (the agent, whose
    window is smaller by default, stops sending before that)."""

    DEPTH = 16

    def __init__(
        self,
        stream: trio.SocketStream,
        *,
        claim: Callable[[str, AgentBatch, bool], Awaitable[list[_Item]]],
        allocate: Callable[[list[_Item]], Awaitable[None]],
        store: Callable[[str, list[_Item]], Awaitable[None]],
        claims_are_reads: bool,
        profile: Callable[[], list[tuple[list[int], dict[str, float]]] | None] = lambda: None,
    ) -> None:
        self.stream = stream
        self._profile = profile
        self._claim = claim
        self._allocate_positions = allocate
        self._store = store
        self._claims_are_reads = claims_are_reads
        self._allocated = trio.Event()  # the previous batch has its positions
        self._allocated.set()
        self._done_send, self._done_receive = trio.open_memory_channel[
            tuple[int, trio.Event, dict[str, float] | None]
        ](self.DEPTH)

    async def add(
        self, nursery: trio.Nursery, node: str, batch: AgentBatch, fresh: bool = False
    ) -> None:
        steps: dict[str, float] | None = None
        profile = self._profile()
        if profile is not None:
            steps = {"received": time.time()}
            profile.append(([c.ts for c in batch.changes], steps))
        previous, allocated, stored = self._allocated, trio.Event(), trio.Event()
        self._allocated = allocated
        await self._done_send.send((batch.seq, stored, steps))
        nursery.start_soon(self._run, node, batch, fresh, previous, allocated, stored, steps)

    async def _run(
        self,
        node: str,
        batch: AgentBatch,
        fresh: bool,
        previous: trio.Event,
        allocated: trio.Event,
        stored: trio.Event,
        steps: dict[str, float] | None,
    ) -> None:
        if self._claims_are_reads:  # no contention: any order
            items = await self._claim(node, batch, fresh)
            await previous.wait()
        else:
            await previous.wait()
            items = await self._claim(node, batch, fresh)
        if steps is not None:
            steps["claimed"] = time.time()
        await self._allocate_positions(items)
        allocated.set()
        if steps is not None:
            steps["positioned"] = time.time()
        await self._store(node, items)
        if steps is not None:
            steps["stored"] = time.time()
        stored.set()

    async def acknowledge(self) -> None:
        """Acknowledge batches in the agent's order, each once it is stored."""
        async for seq, stored, steps in self._done_receive:
            await stored.wait()
            await self.stream.send_all(encode_ack(seq))
            if steps is not None:
                steps["acked"] = time.time()


def _address(agent: str) -> tuple[str, int]:
    host, sep, port = agent.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"an agent address is 'host:port', got {agent!r}")
    return host, int(port)

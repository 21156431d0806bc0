"""The writing side of change streams: capture (`ChangeLog`), nudges, `ChangePublisher`.

A write through a `Database` (trio_rt.cassandra) gets a position from a `Sequencer` and a
change entry in the same logged batch (`ChangeLog`, the capture seam); once it commits, a
*nudge* on the broker wakes every server's tails (`Nudges`). `ChangePublisher` is this side
alone, for processes that write but serve no WebSockets. The reading side is
`change_reader.py`; `changes.py` (`ChangeStreamManager`) puts the parts together.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from .._core.protocol import StreamPosition, encode
from .broker import Broker
from .streams import Allocation, Sequencer, StreamEntry

if TYPE_CHECKING:
    from ..cassandra import CapturedWrite, Change, Database, Table
    from ..cassandra._streams import CassandraStreamStore

__all__ = [
    "OPERATIONS",
    "ChangeEvent",
    "ChangeLog",
    "ChangePublisher",
    "Nudges",
    "nudge_channel",
    "stream_name",
]

log = logging.getLogger("trio_rt.changes")

OPERATIONS = frozenset({"insert", "update", "delete"})


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


def stream_name(table: str) -> str:
    """The stream a table's changes are stored in (``table:<name>``)."""
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
        *,
        remember: Callable[[str, list[StreamEntry]], None] | None = None,
    ) -> None:
        self.store = store
        self.sequencer = sequencer
        self.notify = notify
        self.remember = remember

    async def prepare(self, change: Change) -> CapturedWrite:
        from ..cassandra import CapturedWrite

        stream = stream_name(change.table)
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
            entry=StreamEntry(allocation.position, allocation.timestamp, payload),
        )

    def committed(self, change: Change, write: CapturedWrite) -> None:
        if self.remember is not None and isinstance(write.entry, StreamEntry):
            # Its payload is known: this process's tails need not read it back.
            self.remember(stream_name(change.table), [write.entry])
        if self.notify is not None:
            allocation = write.token
            offset = allocation.position.offset if isinstance(allocation, Allocation) else 0
            self.notify(stream_name(change.table), offset)

    def failed(self, change: Change, write: CapturedWrite, exc: BaseException) -> None:
        # The allocated offset stays a hole; readers skip it after their hole_timeout.
        log.debug("change to %s not written (%r): its position stays a hole", change.table, exc)


class Nudges:
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

    `cdc_tables`: the tables (names or `Table`s) that Cassandra's CDC records too, on servers
    with ``source=Cdc(..., outbox=True)`` (docs/cdc.md): the writes to them through `db` are
    claimed for the outbox before they are sent (`OutboxClaims`), so the CDC agents' reports
    of them are duplicates and each is delivered once. The claims table is the servers'
    (``trio_rt_cdc_claims`` in `db`'s keyspace, kept as long as `store` keeps entries).
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
        cdc_tables: Iterable[str | Table] = (),
    ) -> None:
        from ..cassandra._streams import CassandraStreamStore
        from ..cassandra._table import Table

        if db.capture is not None:
            raise ValueError("this Database already has a change capture")
        self.db = db
        self.broker = broker
        self.sequencer = sequencer
        self.store = store if store is not None else CassandraStreamStore(db.session, db.keyspace)
        self.sequencer.attach(self.store)
        self.flush_timeout = float(flush_timeout)
        self._nudges = Nudges(broker, nudge_channel(channel_prefix))
        self.changelog = ChangeLog(self.store, sequencer, self._nudges.add)
        db.capture = self.changelog
        names = frozenset(t.name if isinstance(t, Table) else t for t in cdc_tables)
        for name in names:
            if not isinstance(name, str) or not name:
                raise TypeError(f"cdc_tables holds table names or Tables, not {name!r}")
        if names:
            from ..cassandra._cdc import OutboxClaims
            from ..cassandra._cdc_claims import CdcClaims

            claims = CdcClaims(db.session, db.keyspace, retention=self.store.retention)
            db.capture = OutboxClaims(self.changelog, claims, names)
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
                from ..redis._aio import ensure_loop

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

"""Where a `ChangeStreamManager`'s changes come from: the outbox, Cassandra's CDC, or both.

``ChangeStreamManager(db, manager, source=...)`` takes one of:

- `Outbox()` (the default): the writes made through `db` (and through `ChangePublisher`s)
  are recorded as they are written (`ChangeLog`); other clients' writes are not seen.
- ``Cdc(agents=[...])``: every write to the captured tables, whoever makes it, read from the
  nodes' commit logs by the CDC agents (docs/cdc.md) and stored by a `CdcSource` that runs in
  the manager's service nursery. `db` gets no capture: its writes come through CDC too.
- ``Cdc(agents=[...], outbox=True)``: both. Writes through `db` keep the outbox's latency and
  full rows, and are claimed for the outbox before they are sent (`OutboxClaims`), so the
  agents' reports of them are duplicates: each change is delivered once.

Both kinds of change land in the same streams ``table:<name>`` (same store, same sequencer),
so watchers, subscriptions, filters and ``since`` recovery do not know the difference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

from .._core.checks import require_positive_ints
from ._cdc import CdcSource, OutboxClaims, _address
from ._table import Table

if TYPE_CHECKING:
    from .._engine.changes import ChangeLog
    from .._engine.streams import Sequencer, StreamEntry
    from ._database import Database
    from ._streams import CassandraStreamStore

__all__ = ["Cdc", "ChangeSource", "Outbox", "install_source"]


@dataclass(frozen=True)
class Outbox:
    """Changes recorded by trio_rt's own writes (`ChangeLog` on the `Database`): the
    default source of a `ChangeStreamManager`."""


@dataclass(frozen=True)
class Cdc:
    """Changes read from Cassandra's CDC by the agent beside each node (docs/cdc.md).

    `agents`: ``"host:port"`` of every node's agent (at least one). `tables`: the tables to
    record (their definitions, created or altered ``WITH cdc = true``); by default (None)
    the manager's `tables` plus every `Table` given to `watch`. `outbox`: also record the
    writes through the manager's `Database` with the outbox (both sources; each change
    once). `single_reporter`: each change is reported by one agent only (one node, or
    replication factor 1), so claims are read instead of taken with lightweight
    transactions (cheaper; wrong with several replicas' agents: a change would come once
    per replica). `concurrency`: requests to Cassandra in flight at once, at most.
    `ValueError`/`TypeError` at construction for a bad address, table or count.
    """

    agents: Sequence[str]
    tables: Sequence[Table] | None = None
    outbox: bool = False
    single_reporter: bool = False
    concurrency: int = 32
    reconnect_delay: float = field(default=0.2, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.agents, str):
            raise TypeError("agents is a list of 'host:port' strings, not one string")
        agents = tuple(self.agents)
        if not agents:
            raise ValueError("Cdc needs at least one agent address ('host:port')")
        for agent in agents:
            _address(agent)  # ValueError for a bad one
        object.__setattr__(self, "agents", agents)
        if self.tables is not None:
            tables = tuple(self.tables)
            for table in tables:
                if not isinstance(table, Table):
                    raise TypeError(f"Cdc tables are Table definitions, got {table!r}")
            object.__setattr__(self, "tables", tables)
        if not isinstance(self.outbox, bool) or not isinstance(self.single_reporter, bool):
            raise TypeError("outbox and single_reporter are True or False")
        require_positive_ints(concurrency=self.concurrency)


#: What `ChangeStreamManager(source=...)` takes.
ChangeSource: TypeAlias = Outbox | Cdc


def install_source(
    source: object,
    db: Database,
    changelog: ChangeLog,
    *,
    store: CassandraStreamStore,
    sequencer: Sequencer,
    notify: Callable[[str, int], None],
    tables: Iterable[Table],
    remember: Callable[[str, list[StreamEntry]], None] | None = None,
) -> CdcSource | None:
    """Set `db`'s capture for `source` and build the `CdcSource` it needs (None for the
    outbox alone). What `ChangeStreamManager` calls; raises `TypeError` for something that is
    not a `ChangeSource`, `ValueError` for a `db` whose capture contradicts it."""
    if isinstance(source, Outbox):
        if db.capture is None:
            db.capture = changelog
        return None
    if not isinstance(source, Cdc):
        raise TypeError(f"source is Outbox() or Cdc(...), not {source!r}")
    cdc = CdcSource(
        db.session,
        db.keyspace,
        agents=source.agents,
        tables=source.tables if source.tables is not None else tables,
        store=store,
        sequencer=sequencer,
        notify=notify,
        remember=remember,
        concurrency=source.concurrency,
        reconnect_delay=source.reconnect_delay,
        single_reporter=source.single_reporter,
        outbox_claims=source.outbox,
    )
    cdc.follows_manager = source.tables is None
    if not source.outbox:
        if db.capture is not None:
            # Its entries and CDC's would both reach the stream: every write twice.
            raise ValueError(
                "source=Cdc(...) records the writes through this Database itself; it must not "
                "have a capture (use Cdc(..., outbox=True) to keep the outbox for them)"
            )
        return cdc
    if db.capture is None:
        db.capture = OutboxClaims(changelog, cdc.claims, cdc.tables.keys())
    elif not isinstance(db.capture, OutboxClaims):
        raise ValueError(
            "source=Cdc(..., outbox=True): this Database's capture must claim its writes for "
            "the outbox (OutboxClaims), or CDC delivers them again; leave db.capture unset"
        )
    return cdc

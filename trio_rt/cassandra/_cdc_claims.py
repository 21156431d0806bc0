"""Claims: who recorded each change reported by CDC (`CdcSource`) or written through the
outbox (`OutboxClaims`), in ``trio_rt_cdc_claims``, so that each change is stored once.

A claim names a change by its `change_id` (table, kind, write timestamp, key) and lives in a
partition of one stream and 10 s of write time: the claims of one agent batch usually share
one partition, and are taken in one conditional batch (`CdcClaims.claim_many`), or read
(`CdcClaims.check_many`) when one agent reports each change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import trio

from .._core.checks import require_positive_numbers
from .._engine.streams import Allocation
from ..cdc._wire import ChangeKind, change_id
from ._capture import CapturedWrite, Change, ChangeCapture
from ._session import CassandraSession, Params

__all__ = ["CLAIM_BUCKET_US", "OUTBOX", "CdcClaims", "Claim", "OutboxClaims"]

#: The owner a claim made by the outbox carries.
OUTBOX = "outbox"

#: Claims are kept in partitions of one stream and this many microseconds of write time:
#: the claims of one agent batch usually share one, and are made in one conditional batch.
CLAIM_BUCKET_US = 10_000_000


def _stream(table: str) -> str:
    # `stream_name` in _engine.change_capture, which imports this package lazily: an import
    # of it here would be a cycle.
    return f"table:{table}"


@dataclass(frozen=True)
class Claim:
    """One change to claim: its stream, its id (`change_id`) and write timestamp (µs)."""

    stream: str
    change: str
    ts: int

    @property
    def bucket(self) -> int:
        return self.ts // CLAIM_BUCKET_US


class CdcClaims:
    """Who recorded each change: ``trio_rt_cdc_claims`` in `keyspace`, one row per change id
    (``owner``: the node whose agent reported it, or ``outbox``; ``pos``/``epoch`` once its
    entry is written), in partitions of one stream and 10 s of write time, kept for
    `retention` seconds (the stream store's, by default)."""

    def __init__(self, session: CassandraSession, keyspace: str, *, retention: float) -> None:
        require_positive_numbers(retention=retention)
        self.session = session
        self.keyspace = keyspace
        self.retention = int(retention)
        table = f"{keyspace}.trio_rt_cdc_claims"
        self._claim = (
            f"INSERT INTO {table} (stream, bucket, change, owner) VALUES (?, ?, ?, ?) "
            f"IF NOT EXISTS USING TTL {self.retention}"
        )
        self._record = (
            f"UPDATE {table} USING TTL {self.retention} SET owner = ?, pos = ?, epoch = ? "
            "WHERE stream = ? AND bucket = ? AND change = ?"
        )
        self._read = (
            f"SELECT change, owner, pos FROM {table} "
            "WHERE stream = ? AND bucket = ? AND change IN ?"
        )
        self._outbox = (
            f"INSERT INTO {table} (stream, bucket, change, owner, pos, epoch) "
            f"VALUES (?, ?, ?, ?, ?, ?) USING TTL {self.retention}"
        )

    async def create_schema(self) -> None:
        await self.session.execute(
            f"CREATE TABLE IF NOT EXISTS {self.keyspace}.trio_rt_cdc_claims ("
            "stream text, bucket bigint, change text, owner text, pos bigint, epoch text, "
            "PRIMARY KEY ((stream, bucket), change))"
        )

    async def claim(self, claim: Claim, owner: str) -> bool:
        """True when `owner` is to store this change: it claimed it now, or claimed it before
        and did not store it (a re-send after a failure). False: a duplicate."""
        rows = await self.session.execute(
            self._claim, (claim.stream, claim.bucket, claim.change, owner)
        )
        row = rows[0] if rows else {}
        if row.get("[applied]", True):
            return True
        return row.get("owner") == owner and row.get("pos") is None

    async def claim_many(self, claims: Sequence[Claim], owner: str) -> list[bool]:
        """`claim` for each, in one lightweight transaction per partition when none of them
        is claimed yet (the common case: one conditional batch); otherwise one by one.
        Claims in different partitions are made concurrently."""
        owned = [False] * len(claims)
        groups: dict[tuple[str, int], list[int]] = {}
        for n, claim in enumerate(claims):
            groups.setdefault((claim.stream, claim.bucket), []).append(n)

        async def one_partition(indexes: list[int]) -> None:
            if len(indexes) > 1:
                statements = [
                    (self._claim, (c.stream, c.bucket, c.change, owner))
                    for c in (claims[n] for n in indexes)
                ]
                rows = await self.session.execute_batch(statements, logged=True)
                if rows and rows[0].get("[applied]", False):
                    for n in indexes:
                        owned[n] = True
                    return
                # Some are claimed already (a re-send, a replica, the outbox): nothing of the
                # batch was applied; decide each.
            for n in indexes:
                owned[n] = await self.claim(claims[n], owner)

        if len(groups) == 1:
            await one_partition(next(iter(groups.values())))
        else:
            async with trio.open_nursery() as nursery:
                for indexes in groups.values():
                    nursery.start_soon(one_partition, indexes)
        return owned

    async def check_many(self, claims: Sequence[Claim], owner: str) -> list[bool]:
        """What `claim_many` decides, read instead of claimed (one read per partition, no
        lightweight transaction): right only when `owner` is the one agent that reports
        these changes (`CdcSource(single_reporter=True)`), whose consumer handles its
        batches one after the other. A claim row is then the outbox's (taken before its
        write was sent) or this owner's own from an earlier connection."""
        owned = [True] * len(claims)
        groups: dict[tuple[str, int], list[int]] = {}
        for n, claim in enumerate(claims):
            groups.setdefault((claim.stream, claim.bucket), []).append(n)

        async def one_partition(stream: str, bucket: int, indexes: list[int]) -> None:
            changes = [claims[n].change for n in indexes]
            rows = await self.session.execute(self._read, (stream, bucket, changes))
            found = {row["change"]: row for row in rows}
            for n in indexes:
                row = found.get(claims[n].change)
                if row is not None:
                    owned[n] = row.get("owner") == owner and row.get("pos") is None

        if len(groups) == 1:
            (((stream, bucket), indexes),) = groups.items()
            await one_partition(stream, bucket, indexes)
        else:
            async with trio.open_nursery() as nursery:
                for (stream, bucket), indexes in groups.items():
                    nursery.start_soon(one_partition, stream, bucket, indexes)
        return owned

    def record(self, claim: Claim, owner: str, allocation: Allocation) -> tuple[str, Params]:
        """The statement, for the entry's batch, that marks the claim as stored (and makes
        it, when it was only read)."""
        pos = allocation.position
        return self._record, (
            owner,
            pos.offset,
            pos.epoch,
            claim.stream,
            claim.bucket,
            claim.change,
        )

    async def claim_outbox(self, claim: Claim, allocation: Allocation) -> None:
        """Mark a change the outbox is about to write (before its batch is sent, so that the
        agents' claims see it)."""
        pos = allocation.position
        await self.session.execute(
            self._outbox,
            (claim.stream, claim.bucket, claim.change, OUTBOX, pos.offset, pos.epoch),
        )


class OutboxClaims:
    """A `ChangeCapture` around the outbox's (`ChangeLog`) for a table captured by both the
    outbox and CDC: before a write to one of `cdc_tables` is sent, its change id is claimed
    for the outbox (one plain write), so the CDC agents' reports of the same write are
    duplicates. Writes to other tables pass through unchanged.

    ``db.capture = OutboxClaims(changes.changelog, source.claims, source.cdc_tables)``; every
    process that writes to such a table through `Database` with a capture needs it (a
    publisher without it would deliver those writes twice: once from its entry, once from
    CDC).
    """

    def __init__(self, inner: ChangeCapture, claims: CdcClaims, cdc_tables: Iterable[str]) -> None:
        self.inner = inner
        self.claims = claims
        # A set is kept as given: a live view (``source.tables.keys()``) follows the tables
        # the source records.
        self.cdc_tables: AbstractSet[str] = (
            cdc_tables if isinstance(cdc_tables, AbstractSet) else frozenset(cdc_tables)
        )

    async def prepare(self, change: Change) -> CapturedWrite:
        write = await self.inner.prepare(change)
        if change.table in self.cdc_tables and isinstance(write.token, Allocation):
            table = change.definition
            if table is None:
                raise ValueError(f"a change to {change.table!r} without its table definition")
            kind: ChangeKind = "delete" if change.operation == "delete" else "write"
            ident = change_id(
                self.claims.keyspace, change.table, kind, write.timestamp, table.to_json(change.key)
            )
            claim = Claim(_stream(change.table), ident, write.timestamp)
            await self.claims.claim_outbox(claim, write.token)
        return write

    def committed(self, change: Change, write: CapturedWrite) -> None:
        self.inner.committed(change, write)

    def failed(self, change: Change, write: CapturedWrite, exc: BaseException) -> None:
        self.inner.failed(change, write, exc)

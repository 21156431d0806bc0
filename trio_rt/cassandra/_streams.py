"""CassandraStreamStore: stream entries (room messages, table changes) kept in Cassandra.

Two tables in the application's keyspace:

- ``trio_rt_stream_entries``: PRIMARY KEY ((stream, epoch, bucket, shard), pos). `bucket` is
  ``pos // bucket_size`` and `shard` is ``pos % shards``: a partition holds at most
  ``bucket_size / shards`` entries, and consecutive writes to one stream spread over `shards`
  partitions (and so over replicas) instead of one hot partition. Buckets are numbered by
  offset rather than time because a client's position (offset + epoch) must lead straight to
  its partition. Rows expire after `retention` (a TTL on every write).
- ``trio_rt_stream_heads``: one row per stream, the greatest allocation written. Every entry
  write updates it with the entry's own write timestamp, so last-write-wins keeps the greatest.

A table change is written in the same logged batch as the data (`append_statements`), so the
data and its change entry are both written or neither.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import trio

from .._core.checks import int_problem, number_problem, require
from .._engine.streams import Allocation, StreamEntry, StreamPosition, StreamStore
from ._session import CassandraSession, Params

__all__ = ["CassandraStreamStore"]

_IDENT = re.compile(r"[a-z][a-z0-9_]{0,47}")


class CassandraStreamStore(StreamStore):
    """A `StreamStore` in Cassandra. Call `create_schema()` once (idempotent)."""

    def __init__(
        self,
        session: CassandraSession,
        keyspace: str,
        *,
        retention: float = 7 * 24 * 3600,
        bucket_size: int = 10_000,
        shards: int = 4,
    ) -> None:
        if not _IDENT.fullmatch(keyspace):
            raise ValueError(f"invalid keyspace name {keyspace!r}")
        require(
            number_problem("retention", retention, at_least=1),  # seconds: a TTL of 0 is none
            int_problem("bucket_size", bucket_size),
            int_problem("shards", shards),
        )
        if bucket_size % shards:
            raise ValueError("bucket_size must be a multiple of shards")
        self.session = session
        self.keyspace = keyspace
        self.retention = int(retention)
        self.bucket_size = bucket_size
        self.shards = shards
        ks = keyspace
        self._insert = (
            f"INSERT INTO {ks}.trio_rt_stream_entries (stream, epoch, bucket, shard, pos, ts, "
            f"payload) VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL {self.retention}"
        )
        self._update_head = (
            f"UPDATE {ks}.trio_rt_stream_heads SET epoch = ?, pos = ?, ts = ? WHERE stream = ?"
        )
        cols = "pos, ts, payload"
        where = "stream = ? AND epoch = ? AND bucket = ? AND shard = ?"
        self._after = (
            f"SELECT {cols} FROM {ks}.trio_rt_stream_entries WHERE {where} AND pos > ? LIMIT ?"
        )
        self._before = (
            f"SELECT {cols} FROM {ks}.trio_rt_stream_entries WHERE {where} AND pos < ? "
            "ORDER BY pos DESC LIMIT ?"
        )
        self._one = f"SELECT pos FROM {ks}.trio_rt_stream_entries WHERE {where} AND pos = ?"
        self._head = f"SELECT epoch, pos, ts FROM {ks}.trio_rt_stream_heads WHERE stream = ?"

    async def create_schema(self) -> None:
        ks = self.keyspace
        await self.session.execute(
            f"CREATE TABLE IF NOT EXISTS {ks}.trio_rt_stream_entries ("
            "stream text, epoch text, bucket bigint, shard int, pos bigint, ts bigint, "
            "payload text, PRIMARY KEY ((stream, epoch, bucket, shard), pos))"
        )
        await self.session.execute(
            f"CREATE TABLE IF NOT EXISTS {ks}.trio_rt_stream_heads ("
            "stream text PRIMARY KEY, epoch text, pos bigint, ts bigint)"
        )

    def _partition(self, stream: str, epoch: str, offset: int) -> tuple[str, str, int, int]:
        return stream, epoch, offset // self.bucket_size, offset % self.shards

    def append_statements(
        self, stream: str, allocation: Allocation, payload: str
    ) -> list[tuple[str, Params]]:
        """The statements that store one entry; run them in a batch written at
        ``allocation.timestamp`` (with the data they describe, for a table change)."""
        pos = allocation.position
        return [
            (
                self._insert,
                (
                    *self._partition(stream, pos.epoch, pos.offset),
                    pos.offset,
                    allocation.timestamp,
                    payload,
                ),
            ),
            (self._update_head, (pos.epoch, pos.offset, allocation.timestamp, stream)),
        ]

    async def append(self, stream: str, allocation: Allocation, payload: str) -> None:
        await self.session.execute_batch(
            self.append_statements(stream, allocation, payload), timestamp=allocation.timestamp
        )

    async def _query_shards(
        self,
        query: str,
        stream: str,
        epoch: str,
        bucket: int,
        bound: int,
        limit: int,
        shards: Iterable[int] | None = None,
    ) -> list[StreamEntry]:
        results: list[list[Any]] = [[] for _ in range(self.shards)]

        async def one(shard: int) -> None:
            results[shard] = await self.session.execute(
                query, (stream, epoch, bucket, shard, bound, limit)
            )

        async with trio.open_nursery() as nursery:
            for shard in range(self.shards) if shards is None else shards:
                nursery.start_soon(one, shard)
        return [
            StreamEntry(StreamPosition(row["pos"], epoch), row["ts"], row["payload"])
            for rows in results
            for row in rows
        ]

    async def read(
        self, stream: str, epoch: str, after: int, limit: int, *, upto: int | None = None
    ) -> list[StreamEntry]:
        if limit < 1:
            return []
        if upto is None:
            head = await self.head(stream)
            if head is None or head.position.epoch != epoch:
                return []
            upto = head.position.offset
        last_bucket = max(upto, after + 1) // self.bucket_size
        # A nudge for the next few offsets: only their shards can hold them (one query, not
        # one per shard, on the latency path).
        shards = None
        if upto - after < self.shards:
            shards = sorted({o % self.shards for o in range(after + 1, max(upto, after + 1) + 1)})
        out: list[StreamEntry] = []
        bucket = (after + 1) // self.bucket_size
        while bucket <= last_bucket and len(out) < limit:
            found = await self._query_shards(
                self._after, stream, epoch, bucket, after, limit, shards
            )
            found.sort(key=lambda e: e.position.offset)
            out.extend(found[: limit - len(out)])
            bucket += 1
        return out

    async def latest(
        self, stream: str, epoch: str, limit: int, before: int | None = None
    ) -> list[StreamEntry]:
        head = await self.head(stream)
        if head is None or head.position.epoch != epoch or limit < 1:
            return []
        bound = (
            head.position.offset + 1 if before is None else min(before, head.position.offset + 1)
        )
        out: list[StreamEntry] = []
        bucket = (bound - 1) // self.bucket_size
        empty = 0
        while bucket >= 0 and len(out) < limit:
            found = await self._query_shards(self._before, stream, epoch, bucket, bound, limit)
            if not found:
                empty += 1
                if out or empty > 1:
                    break  # older buckets have expired (or were skipped by a reseed)
            found.sort(key=lambda e: e.position.offset, reverse=True)
            out.extend(found[: limit - len(out)])
            bucket -= 1
        out.reverse()
        return out

    async def contains(self, stream: str, position: StreamPosition) -> bool:
        rows = await self.session.execute(
            self._one, (*self._partition(stream, position.epoch, position.offset), position.offset)
        )
        return bool(rows)

    async def head(self, stream: str) -> Allocation | None:
        rows = await self.session.execute(self._head, (stream,))
        if not rows or rows[0]["epoch"] is None:
            return None
        row = rows[0]
        return Allocation(StreamPosition(row["pos"], row["epoch"]), row["ts"])

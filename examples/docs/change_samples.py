"""The samples of docs/streams.md ("Processes that only write") and docs/cassandra.md
("Creating the tables"), run by tests/engine/test_change_faults.py and
tests/cassandra/test_schema.py against a real Cassandra (and Redis)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from trio_rt_examples.capabilities.change_streams import posts

from trio_rt.cassandra import CassandraSession


async def write_posts(
    session: CassandraSession, keyspace: str, redis_url: str, rows: Sequence[Mapping[str, Any]]
) -> None:
    """A worker that only writes: its changes reach every server's watchers and subscribers."""
    # --8<-- [start:publisher]
    from trio_rt import ChangePublisher, RedisBroker, RedisSequencer
    from trio_rt.cassandra import Database

    db = Database(session, keyspace)
    async with ChangePublisher(
        db,
        broker=RedisBroker(redis_url),  # the servers' Redis: nudges wake their tails
        sequencer=RedisSequencer(redis_url),  # the servers' namespace (default "trio_rt")
    ):
        for row in rows:
            await db.insert(posts, row)  # stored with its change entry, in one batch
    # --8<-- [end:publisher]


async def deploy(host: str, port: int, keyspace: str) -> list[str]:
    """A deploy step: every table the servers need, before they start."""
    # --8<-- [start:schema]
    from trio_rt.cassandra import create_schema

    async with CassandraSession.connect([host], port=port) as session:
        made = await create_schema(session, keyspace, tables=[posts])  # idempotent
    # --8<-- [end:schema]
    return made

"""A writer process that dies between its write and the notification (a test helper).

``python -m tests.change_writer CASSANDRA REDIS_URL KEYSPACE NAMESPACE ID``: inserts one row into
`posts` through a captured `Database` (positions from the shared `RedisSequencer`), and the
moment the batch has committed, before anyone is notified, exits the process with
``os._exit`` (no cleanup, no nudge, as a crash would).
"""

from __future__ import annotations

import os
import sys

import trio

from trio_rt import RedisSequencer
from trio_rt._changes import ChangeLog
from trio_rt.cassandra import CassandraSession, Database
from trio_rt.cassandra._streams import CassandraStreamStore
from trio_rt.testing.services import parse_cassandra_endpoint

from .test_change_streams import posts


def crash(*_: object) -> None:
    os._exit(17)


async def main(cassandra: str, redis_url: str, keyspace: str, namespace: str, key: int) -> None:
    endpoint = parse_cassandra_endpoint(cassandra)
    async with (
        CassandraSession.connect([endpoint.host], port=endpoint.port) as session,
        RedisSequencer(redis_url, namespace=namespace) as sequencer,
    ):
        store = CassandraStreamStore(session, keyspace)
        sequencer.attach(store)
        changelog = ChangeLog(store, sequencer)
        changelog.committed = crash  # type: ignore[method-assign]
        db = Database(session, keyspace, capture=changelog)
        await db.insert(posts(), {"id": key, "author": "crash", "title": "t", "score": 0})


if __name__ == "__main__":
    cassandra, redis_url, keyspace, namespace, key = sys.argv[1:6]
    trio.run(main, cassandra, redis_url, keyspace, namespace, int(key))
    sys.exit("the writer should have died after its write")

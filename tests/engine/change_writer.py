"""A writer process for the change-stream tests: it only writes, through `ChangePublisher`.

``python -m tests.engine.change_writer CASSANDRA REDIS_URL KEYSPACE NAMESPACE ID [--count N]``

- without ``--count``: inserts row `ID` into `posts` (positions from the shared
  `RedisSequencer` in `NAMESPACE`) and, the moment the batch has committed, before anyone is
  notified, exits the process with ``os._exit(17)`` (no cleanup, no nudge, as a crash would);
- with ``--count N``: inserts rows ID .. ID+N-1 one at a time, each nudging the servers through
  the `RedisBroker` (channel prefix ``--channel-prefix``, default ``trio_rt``), then flushes
  the nudges and exits 0. It prints each id once its write has committed.
"""

from __future__ import annotations

import argparse
import os

import trio

from trio_rt import ChangePublisher, RedisBroker, RedisSequencer
from trio_rt.cassandra import CassandraSession, Database
from trio_rt.testing.services import parse_cassandra_endpoint

from .test_change_streams import posts


def crash(*_: object) -> None:
    os._exit(17)


async def main(args: argparse.Namespace) -> None:
    endpoint = parse_cassandra_endpoint(args.cassandra)
    async with CassandraSession.connect([endpoint.host], port=endpoint.port) as session:
        db = Database(session, args.keyspace)
        publisher = ChangePublisher(
            db,
            broker=RedisBroker(args.redis_url),
            sequencer=RedisSequencer(args.redis_url, namespace=args.namespace),
            channel_prefix=args.channel_prefix,
        )
        if args.count is None:
            publisher.changelog.committed = crash  # type: ignore[method-assign]
        async with publisher:
            for key in range(args.id, args.id + (args.count or 1)):
                change = await db.insert(
                    posts(), {"id": key, "author": "writer", "title": "t", "score": 0}
                )
                assert change is not None
                print(key, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for name in ("cassandra", "redis_url", "keyspace", "namespace"):
        parser.add_argument(name)
    parser.add_argument("id", type=int)
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--channel-prefix", default="trio_rt")
    arguments = parser.parse_args()
    trio.run(main, arguments)
    if arguments.count is None:
        raise SystemExit("the writer should have died after its write")

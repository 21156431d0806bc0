"""A writer that is not trio_rt: plain cassandra-driver, as cqlsh or another service would be.

``python -m tests.cassandra.cdc_writer HOST:PORT KEYSPACE statements`` reads CQL statements, one per
line, from stdin and runs them one after the other (each waits for the previous one); it
prints ``ok N`` after statement N.

``python -m tests.cassandra.cdc_writer HOST:PORT KEYSPACE load --count N --rate R --size S``
``[--start K]``
inserts rows ``K .. K+N-1`` of S bytes into ``load``, R per second, up to 16 at a time
(``--concurrency``; 1: each write waits for the previous one); it
prints ``done N failed F``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings


def connect(endpoint: str):  # type: ignore[no-untyped-def]
    from cassandra.cluster import Cluster
    from cassandra.policies import RoundRobinPolicy

    host, _, port = endpoint.rpartition(":")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = Cluster(
            [host], port=int(port), protocol_version=5, load_balancing_policy=RoundRobinPolicy()
        )
        return cluster, cluster.connect()


def statements(session, keyspace: str) -> None:  # type: ignore[no-untyped-def]
    session.set_keyspace(keyspace)
    for n, line in enumerate(sys.stdin, 1):
        if line.strip():
            session.execute(line)
            print(f"ok {n}", flush=True)


def load(session, keyspace: str, args: argparse.Namespace) -> None:  # type: ignore[no-untyped-def]
    insert = session.prepare(f"INSERT INTO {keyspace}.load (id, body) VALUES (?, ?)")
    body = "x" * args.size
    failed = 0
    futures = []
    started = time.monotonic()
    for n in range(args.count):
        pause = started + n / args.rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        futures.append(session.execute_async(insert, (args.start + n, body)))
        while len(futures) >= args.concurrency:
            try:
                futures.pop(0).result()
            except Exception as exc:  # a rejected write (cdc_raw full) is what this counts
                failed += 1
                print(f"failed: {exc!r}", file=sys.stderr, flush=True)
    for future in futures:
        try:
            future.result()
        except Exception as exc:
            failed += 1
            print(f"failed: {exc!r}", file=sys.stderr, flush=True)
    print(f"done {args.count} failed {failed}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("keyspace")
    parser.add_argument("mode", choices=["statements", "load"])
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    cluster, session = connect(args.endpoint)
    try:
        if args.mode == "statements":
            statements(session, args.keyspace)
        else:
            load(session, args.keyspace, args)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()

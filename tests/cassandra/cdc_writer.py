"""A writer that is not trio_rt: plain cassandra-driver, as cqlsh or another service would be.

``python -m tests.cassandra.cdc_writer HOST:PORT KEYSPACE statements`` reads CQL statements, one per
line, from stdin and runs them one after the other (each waits for the previous one); it
prints ``ok N`` after statement N.

``python -m tests.cassandra.cdc_writer HOST:PORT KEYSPACE load --count N --rate R --size S``
``[--start K]``
inserts rows ``K .. K+N-1`` of S bytes into ``load``, R per second, up to 16 at a time
(``--concurrency``; 1: each write waits for the previous one); it
prints ``done N failed F refused R``, and why each write failed on stderr.

A write Cassandra refuses because cdc_raw is full was not applied. Cassandra 5.0.9 answers it
with ``WriteFailure`` (0 responses, 1 failure, reason UNKNOWN) where the replica is the
coordinator, ``CDCWriteFailure`` elsewhere; on the one-node clusters of these tests a
``WriteFailure`` that no replica acknowledged is that refusal. With
``--retry-refused`` the writer writes it again, 50 ms apart, until it is accepted (R counts the
refusals), as an application should: the refusal is Cassandra's backpressure, a consumer that
catches up makes room. Without it, a refusal counts as a failure. Nothing else is retried: a
timed-out write may have been applied, and writing it again would be a second change.
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
    from cassandra import CDCWriteFailure, WriteFailure

    def is_refusal(exc: Exception) -> bool:
        if isinstance(exc, CDCWriteFailure):
            return True
        return isinstance(exc, WriteFailure) and exc.received_responses == 0

    insert = session.prepare(f"INSERT INTO {keyspace}.load (id, body) VALUES (?, ?)")
    body = "x" * args.size
    failed = refused = 0
    futures: list = []  # (id, future), oldest first

    def settle(row: int, future) -> None:  # type: ignore[no-untyped-def]
        nonlocal failed, refused
        while True:
            try:
                future.result()
                return
            except Exception as exc:
                refused += is_refusal(exc)
                again = is_refusal(exc) and args.retry_refused and refused <= args.refusal_limit
                if not again:
                    failed += 1
                    print(f"failed: {row}: {exc!r}", file=sys.stderr, flush=True)
                    return
                time.sleep(0.05)
                future = session.execute_async(insert, (row, body))

    started = time.monotonic()
    for n in range(args.count):
        pause = started + n / args.rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        row = args.start + n
        futures.append((row, session.execute_async(insert, (row, body))))
        while len(futures) >= args.concurrency:
            settle(*futures.pop(0))
    for pending in futures:
        settle(*pending)
    print(f"done {args.count} failed {failed} refused {refused}", flush=True)


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
    parser.add_argument("--retry-refused", action="store_true")
    # Retrying stops there: a consumer that never catches up must fail the load, not hang it.
    parser.add_argument("--refusal-limit", type=int, default=1200)  # 60 s of 50 ms waits
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

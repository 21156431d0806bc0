"""Change notification latency and fan-out: a write through `Database` -> a WebSocket subscriber.

Three measurements, one run, on a real Cassandra (and Redis for the cross-process case):

1. ``write``: the peer: plain prepared inserts (no capture) - what one Cassandra write costs
   here. Every other figure is also given as a ratio to its p50.
2. ``local``: a server process with a `ChangeStreamManager`; one WebSocket client subscribed to
   the table; the same process writes one row at a time (`--rate` per second) through the
   captured `Database`. Latency = receipt by the client - the write call's start, in the row
   (``time.time_ns()``, one machine).
3. ``remote``: the writer is another process (a second server: `RedisSequencer` + `RedisBroker`);
   the subscriber's server learns of the write from the Redis nudge (its poll interval is 5 s,
   so polling cannot be what delivers).
4. ``fanout``: `--subscribers` clients subscribed, `--writers` concurrent writers write
   `--burst` rows as fast as they can: changes/s written and deliveries/s received.

``--operation update`` measures updates of existing rows (one column set) instead of inserts,
and ``--full-rows`` defines the table with ``capture_full_rows=True`` (each such update reads
the row first, so the change carries the whole row): the cost of whole rows is the difference
between ``--operation update`` with and without it. ``--no-fanout`` skips measurement 4.

Run: ``python -m benchmarks.change_latency [--count 500] [--rate 100] [--subscribers 100]``.
Uses ``$TRIO_RT_CASSANDRA`` / ``$TRIO_RT_REDIS_URL`` or starts both (the project's launcher).
Results go to ``benchmarks/results/`` (gitignored).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from websockets.trio.client import connect

from trio_rt import ChangeStreamManager, RedisBroker, RedisSequencer, WebSocketManager
from trio_rt.cassandra import CassandraSession, Database, Table
from trio_rt.testing.services import CassandraServer, RedisServer, parse_cassandra_endpoint

from .fanout import write_results

TABLE = Table(
    "bench_posts",
    {"id": "int", "sent_ns": "bigint", "body": "text"},
    partition_key="id",
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(latencies_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(latencies_ms),
        "p50_ms": round(statistics.median(latencies_ms), 3),
        "p99_ms": round(percentile(latencies_ms, 0.99), 3),
        "max_ms": round(max(latencies_ms), 3),
    }


@asynccontextmanager
async def server(
    session: CassandraSession, keyspace: str, redis_url: str, *, poll: float
) -> AsyncIterator[tuple[WebSocketManager, ChangeStreamManager, Database]]:
    db = Database(session, keyspace)
    manager = WebSocketManager(
        host="127.0.0.1", port=0, heartbeat_interval=None, broker=RedisBroker(redis_url)
    )
    changes = ChangeStreamManager(
        db,
        manager,
        tables=[TABLE],
        sequencer=RedisSequencer(redis_url, namespace=f"bench{keyspace}"),
        poll_interval=poll,
    )
    async with manager:
        yield manager, changes, db


async def subscriber(url: str, expected: int, out: list[float], ready: trio.Event) -> None:
    async with connect(url, ping_interval=None, max_size=None) as ws:
        await ws.recv()  # welcome
        await ws.send(json.dumps({"type": "subscribe", "table": TABLE.name}))
        while json.loads(await ws.recv())["type"] != "subscribed":
            pass
        ready.set()
        while len(out) < expected:
            msg = json.loads(await ws.recv())
            if msg["type"] == "data_update":
                sent = msg["event"]["data"]["sent_ns"]
                out.append((time.time_ns() - sent) / 1e6)


async def paced_writes(
    db: Database, start: int, count: int, rate: float, operation: str = "insert"
) -> None:
    interval = 1.0 / rate
    if operation == "update":  # the rows exist first (written without capture)
        plain = Database(db.session, db.keyspace)
        for i in range(start, start + count):
            await plain.insert(TABLE, {"id": i, "sent_ns": 0, "body": "x" * 40})
    deadline = trio.current_time()
    for i in range(start, start + count):
        deadline += interval
        if operation == "update":
            await db.update(TABLE, {"id": i}, {"sent_ns": time.time_ns()})
        else:
            await db.insert(TABLE, {"id": i, "sent_ns": time.time_ns(), "body": "x" * 40})
        await trio.sleep_until(deadline)


async def measure(args: argparse.Namespace, cassandra: str, redis_url: str) -> dict[str, Any]:
    endpoint = parse_cassandra_endpoint(cassandra)
    keyspace = "bench_" + uuid.uuid4().hex[:8]
    results: dict[str, Any] = {}
    async with CassandraSession.connect([endpoint.host], port=endpoint.port) as session:
        await session.create_keyspace(keyspace)
        try:
            plain = Database(session, keyspace)
            await plain.create_table(TABLE)
            # 1. the peer: a plain write
            write_ms = []
            for i in range(args.count):
                t0 = time.perf_counter()
                await plain.insert(TABLE, {"id": -i - 1, "sent_ns": 0, "body": "x" * 40})
                write_ms.append((time.perf_counter() - t0) * 1000)
            results["write"] = summary(write_ms)
            async with (
                server(session, keyspace, redis_url, poll=5.0) as (manager, changes, db),
            ):
                await changes.create_schema()
                # 2. local
                local: list[float] = []
                ready = trio.Event()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(subscriber, manager.url, args.count, local, ready)
                    await ready.wait()
                    await paced_writes(db, 0, args.count, args.rate, args.operation)
                results["local"] = summary(local)
                # 3. remote: another process writes
                remote: list[float] = []
                ready = trio.Event()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(subscriber, manager.url, args.count, remote, ready)
                    await ready.wait()
                    await trio.run_process(
                        [
                            sys.executable,
                            "-m",
                            "benchmarks.change_latency",
                            "--role",
                            "writer",
                            "--cassandra",
                            cassandra,
                            "--redis",
                            redis_url,
                            "--keyspace",
                            keyspace,
                            "--count",
                            str(args.count),
                            "--rate",
                            str(args.rate),
                            "--operation",
                            args.operation,
                            *(["--full-rows"] if args.full_rows else []),
                        ]
                    )
                results["remote"] = summary(remote)
                if not args.no_fanout:
                    # 4. fan-out
                    got: list[list[float]] = [[] for _ in range(args.subscribers)]
                    total = args.writers * args.burst
                    async with trio.open_nursery() as nursery:
                        readies = []
                        for sub in got:
                            ready = trio.Event()
                            readies.append(ready)
                            nursery.start_soon(subscriber, manager.url, total, sub, ready)
                        for ready in readies:
                            await ready.wait()
                        t0 = time.perf_counter()

                        async def writer(w: int) -> None:
                            for i in range(args.burst):
                                row = {
                                    "id": 10**7 + w * args.burst + i,
                                    "sent_ns": time.time_ns(),
                                    "body": "x" * 40,
                                }
                                await db.insert(TABLE, row)

                        async with trio.open_nursery() as writers:
                            for w in range(args.writers):
                                writers.start_soon(writer, w)
                        written = time.perf_counter() - t0
                    elapsed = time.perf_counter() - t0
                    every = [x for s in got for x in s]
                    results["fanout"] = {
                        "subscribers": args.subscribers,
                        "changes": total,
                        "changes_per_s_written": round(total / written, 1),
                        "deliveries_per_s": round(len(every) / elapsed, 1),
                        **summary(every),
                    }
                results["skipped_holes"] = changes.stats["skipped_holes"]
        finally:
            await session.drop_keyspace(keyspace)
    base = results["write"]["p50_ms"]
    for name in ("local", "remote"):
        results[name]["ratio_p50_to_write_p50"] = round(results[name]["p50_ms"] / base, 2)
    return results


async def writer_role(args: argparse.Namespace) -> None:
    endpoint = parse_cassandra_endpoint(args.cassandra)
    async with (
        CassandraSession.connect([endpoint.host], port=endpoint.port) as session,
        server(session, args.keyspace, args.redis, poll=5.0) as (_, _, db),
    ):
        await paced_writes(db, 10**6, args.count, args.rate, args.operation)
        await trio.sleep(0.5)  # let the nudges leave


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", default="harness", choices=["harness", "writer"])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--cassandra", default=os.environ.get("TRIO_RT_CASSANDRA"))
    parser.add_argument("--redis", default=os.environ.get("TRIO_RT_REDIS_URL"))
    parser.add_argument("--keyspace")
    parser.add_argument("--operation", default="insert", choices=["insert", "update"])
    parser.add_argument("--full-rows", action="store_true", help="capture_full_rows=True")
    parser.add_argument("--no-fanout", action="store_true", help="skip the fan-out measurement")
    args = parser.parse_args()
    TABLE.capture_full_rows = args.full_rows
    if args.role == "writer":
        trio.run(writer_role, args)
        return
    started: list[Any] = []
    try:
        if args.cassandra is None:
            started.append(CassandraServer.start(die_with_parent=True))
            args.cassandra = f"{started[-1].host}:{started[-1].port}"
        if args.redis is None:
            started.append(RedisServer.start(die_with_parent=True))
            args.redis = started[-1].url
        stamp = dt.datetime.now(dt.UTC)
        results = trio.run(measure, args, args.cassandra, args.redis)
    finally:
        for service in reversed(started):
            service.stop()
    names = ("count", "rate", "subscribers", "writers", "burst", "operation", "full_rows")
    params = {k: getattr(args, k) for k in names}
    path = write_results(
        "change-latency",
        stamp,
        params,
        {"results": results},
        None,
        packages=("trio", "websockets", "cassandra-driver", "trio_rt"),
    )
    print(json.dumps(results, indent=2))
    print(f"results: {path}")


if __name__ == "__main__":
    main()

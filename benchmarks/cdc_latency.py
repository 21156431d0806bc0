"""Write -> WebSocket subscriber through Cassandra's CDC, next to the outbox, in one run.

Starts its own single node WITH CDC and its agent (``commitlog_sync_period`` 2 ms, the agent
polling every ``--poll-ms``), and one server whose `ChangeStreamManager` has both sources
(``source=Cdc(agents=[...], tables=[changes], outbox=True)``), a WebSocket client subscribed
to both tables. Then, one after the other, each at ``--rate`` writes per second:

- ``outbox``: `--count` inserts into ``captured`` through the server's `Database` (the outbox:
  `ChangeLog`, memory sequencer);
- ``cdc``: `--count` plain inserts (no capture: what cqlsh or another service does) into
  ``changes`` (``WITH cdc = true``): commit-log sync, the agent, `CdcSource` (claim,
  position, entry), the tail.

Latency: the write's start -> its ``data_update`` received by the WebSocket client.

``--single-reporter``: claims read instead of taken with lightweight transactions (right
for one node; docs/cdc.md). ``--cdc-only``: ``Cdc(outbox=False)`` (no outbox claims on the
CDC table: with ``--single-reporter``, batches never sent before are stored without reading
claims); the outbox path then writes through a `Database` of its own. ``--runs N``: N runs
on the same node after a warm-up of ``--warmup`` writes per path (not measured: the first
seconds after the node and the agent start are far slower); each run prints the time from
the write to each step of `CdcSource` too (from the write timestamp).

Run: ``python -m benchmarks.cdc_latency [--count 2000] [--rate 200] [--poll-ms 5]
[--window 4] [--single-reporter] [--cdc-only] [--runs 3] [--warmup 1000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable

import trio
from websockets.trio.client import ClientConnection, connect

from trio_rt import ChangeStreamManager, WebSocketManager
from trio_rt.cassandra import CassandraSession, Cdc, Database, Table
from trio_rt.testing.services import CassandraServer


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=100)
    return (
        f"p50 {q[49] * 1e3:.1f} ms, p90 {q[89] * 1e3:.1f} ms, p99 {q[98] * 1e3:.1f} ms, "
        f"max {ordered[-1] * 1e3:.1f} ms (n={len(ordered)})"
    )


async def paced(count: int, rate: float, write: Callable[[int], Awaitable[None]]) -> None:
    """`count` writes started `rate` per second (each in its own task: a slow write does not
    delay the next one's start)."""
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for n in range(count):
            await trio.sleep_until(start + n / rate)
            nursery.start_soon(write, n)


def fmt_load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def median_of(runs: Iterable[list[float]]) -> str:
    """The median over runs of each percentile."""
    qs = [statistics.quantiles(sorted(r), n=100) for r in runs]
    p = {n: statistics.median(q[n - 1] for q in qs) * 1e3 for n in (50, 90, 99)}
    return f"p50 {p[50]:.1f} ms, p90 {p[90]:.1f} ms, p99 {p[99]:.1f} ms"


async def one_run(
    args: argparse.Namespace,
    run: int,
    session: CassandraSession,
    ks: str,
    db: Database,
    captured: Table,
    changes: ChangeStreamManager,
    ws: ClientConnection,
) -> tuple[list[float], list[float], dict[str, list[float]]]:
    """One run: `count` writes through the outbox, then `count` plain writes to the CDC
    table; returns the latencies (s) of each path and, for CDC, of each consumer step."""
    assert changes.cdc is not None
    base = run * 1_000_000
    sent: dict[tuple[str, int], float] = {}
    received: dict[tuple[str, int], float] = {}
    done = {"captured": trio.Event(), "changes": trio.Event()}
    profile: list[tuple[list[int], dict[str, float]]] = []

    async def receive() -> None:
        counts = {"captured": 0, "changes": 0}
        while True:
            message = json.loads(await ws.recv())
            if message.get("type") != "data_update":
                continue
            key = (message["table"], message["event"]["key"]["id"] - base)
            received[key] = time.time()
            counts[key[0]] += 1
            if counts[key[0]] >= args.count:
                done[key[0]].set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        body = "x" * 100

        async def outbox_write(n: int) -> None:
            sent["captured", n] = time.time()
            await db.insert(captured, {"id": base + n, "body": body})

        insert = f"INSERT INTO {ks}.changes (id, body) VALUES (?, ?)"

        async def cdc_write(n: int) -> None:
            sent["changes", n] = time.time()
            await session.execute(insert, (base + n, body))

        await paced(args.count, args.rate, outbox_write)
        with trio.fail_after(120):
            await done["captured"].wait()
        changes.cdc.profile = profile
        await paced(args.count, args.rate, cdc_write)
        with trio.fail_after(120):
            await done["changes"].wait()
        changes.cdc.profile = None
        nursery.cancel_scope.cancel()
    outbox = [received["captured", n] - sent["captured", n] for n in range(args.count)]
    cdc = [received["changes", n] - sent["changes", n] for n in range(args.count)]
    # Each consumer step, from the change's write timestamp (the driver's, µs).
    steps: dict[str, list[float]] = {}
    for stamps, at in profile:
        for step, when in at.items():
            steps.setdefault(step, []).extend(when - ts / 1e6 for ts in stamps)
    return outbox, cdc, {k: v for k, v in steps.items() if len(v) > 1}


async def main(args: argparse.Namespace, node: CassandraServer) -> None:
    assert node.cdc_agent is not None
    async with CassandraSession.connect([node.host], port=node.port) as session:
        ks = "bench_" + uuid.uuid4().hex[:8]
        await session.create_keyspace(ks)
        captured = Table("captured", {"id": "int", "body": "text"}, partition_key="id")
        cdc_table = Table("changes", {"id": "int", "body": "text"}, partition_key="id")
        await session.execute(f"CREATE TABLE {ks}.captured (id int PRIMARY KEY, body text)")
        await session.execute(
            f"CREATE TABLE {ks}.changes (id int PRIMARY KEY, body text) WITH cdc = true"
        )
        db = Database(session, ks)
        manager = WebSocketManager(host="127.0.0.1", port=0, heartbeat_interval=None)
        agent = f"{node.cdc_agent.host}:{node.cdc_agent.port}"
        changes = ChangeStreamManager(
            db,
            manager,
            tables=[captured, cdc_table],
            source=Cdc(
                agents=[agent],
                tables=[cdc_table],
                outbox=not args.cdc_only,
                single_reporter=args.single_reporter,
            ),
        )
        if args.cdc_only:
            # `db` has no capture (its writes come through CDC): the outbox path writes
            # through a Database of its own with the manager's outbox, to a table CDC does
            # not record.
            db = Database(session, ks, capture=changes.changelog)
        await changes.create_schema()
        # The agent restarts after the schema changes above (it reloads the schema).
        await trio.to_thread.run_sync(node.cdc_agent.wait_ready)
        results: list[tuple[list[float], list[float], dict[str, list[float]]]] = []
        async with manager, connect(manager.url, ping_interval=None) as ws:
            await ws.recv()  # welcome
            for name in ("captured", "changes"):
                await ws.send(json.dumps({"type": "subscribe", "table": name}))
                reply = json.loads(await ws.recv())
                assert reply["type"] == "subscribed", reply
            assert changes.cdc is not None
            await changes.cdc.wait_connected()
            if args.warmup:
                # The first seconds after the node and the agent start (JIT compilation,
                # the node's first flushes) are far slower than what follows: not measured.
                warm = argparse.Namespace(**{**vars(args), "count": args.warmup})
                await one_run(warm, 0, session, ks, db, captured, changes, ws)
                print(f"warm-up: {args.warmup} writes per path (not measured)")
            for run in range(args.runs):
                results.append(await one_run(args, run + 1, session, ks, db, captured, changes, ws))
                outbox, cdc, steps = results[-1]
                print(f"run {run + 1}, load average {fmt_load()}")
                print(f"  outbox  write -> subscriber: {percentiles(outbox)}")
                print(f"  cdc     write -> subscriber: {percentiles(cdc)}")
                for step, samples in steps.items():
                    print(f"    cdc write -> {step:<10}: {percentiles(samples)}")
        print(
            f"{args.count} writes at {args.rate:.0f}/s per path, {args.runs} run(s), agent poll "
            f"{args.poll_ms} ms, window {args.window}, single_reporter {args.single_reporter}, "
            f"cdc_only {args.cdc_only}, "
            f"{os.cpu_count()} CPUs, load average at the end {fmt_load()}"
        )
        if args.runs > 1:
            print(f"median of runs, outbox: {median_of(r[0] for r in results)}")
            print(f"median of runs, cdc:    {median_of(r[1] for r in results)}")
        print(f"cdc source stats: {changes.cdc.stats}")
        await session.drop_keyspace(ks)


def run() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--poll-ms", type=int, default=5)
    parser.add_argument("--single-reporter", action="store_true")
    parser.add_argument(
        "--cdc-only",
        action="store_true",
        help="Cdc(outbox=False): no outbox claims on the CDC table (the outbox path writes "
        "through its own Database to a table CDC does not record)",
    )
    parser.add_argument("--runs", type=int, default=1, help="runs on the same node")
    parser.add_argument(
        "--warmup", type=int, default=1000, help="writes per path before the runs, not measured"
    )
    parser.add_argument("--window", type=int, default=4, help="the agent's --window")
    args = parser.parse_args()
    options = {"poll-ms": str(args.poll_ms), "window": str(args.window)}
    node = CassandraServer.start(cdc_agent=True, cdc_agent_options=options)
    try:
        trio.run(main, args, node)
    finally:
        node.stop()


if __name__ == "__main__":
    run()

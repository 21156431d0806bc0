"""Write -> stream entry through Cassandra's CDC, next to the outbox, at a paced rate.

Starts its own single node WITH CDC and its agent (``commitlog_sync_period`` 2 ms, the agent
polling every ``--poll-ms``), then, in one Trio process:

- ``outbox``: `--count` inserts through a captured `Database` (`ChangeLog`, memory
  sequencer) at `--rate` per second; latency = the write call's start -> committed (the entry
  is written in the same batch as the row);
- ``cdc``: `--count` plain inserts (no capture: what cqlsh or another service does) at
  `--rate` per second into a table ``WITH cdc = true``; latency = the write's start -> its
  entry stored by `CdcSource` (its `notify`), through the commit-log sync, the agent and the
  claim + allocation + entry write.

Not yet the subscriber hop (ChangeStreamManager does not take a CDC source yet): both paths
then add the same tail read and WebSocket send (docs/streams.md "What it costs": ~3 ms p50).

Run: ``python -m benchmarks.cdc_latency [--count 2000] [--rate 200] [--poll-ms 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import trio

from trio_rt import ChangeLog, MemorySequencer
from trio_rt.cassandra import CassandraSession, CassandraStreamStore, CdcSource, Database, Table
from trio_rt.testing.services import CassandraServer


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=100)
    return (
        f"p50 {q[49] * 1e3:.1f} ms, p90 {q[89] * 1e3:.1f} ms, p99 {q[98] * 1e3:.1f} ms, "
        f"max {ordered[-1] * 1e3:.1f} ms (n={len(ordered)})"
    )


async def paced(count: int, rate: float, write: object) -> None:
    start = trio.current_time()
    for n in range(count):
        await trio.sleep_until(start + n / rate)
        await write(n)  # type: ignore[operator]


async def main(args: argparse.Namespace, node: CassandraServer) -> None:
    assert node.cdc_agent is not None
    async with CassandraSession.connect([node.host], port=node.port) as session:
        ks = "bench_" + uuid.uuid4().hex[:8]
        await session.create_keyspace(ks)
        store = CassandraStreamStore(session, ks)
        await store.create_schema()
        captured = Table("captured", {"id": "int", "body": "text"}, partition_key="id")
        cdc_table = Table("changes", {"id": "int", "body": "text"}, partition_key="id")
        await session.execute(f"CREATE TABLE {ks}.captured (id int PRIMARY KEY, body text)")
        await session.execute(
            f"CREATE TABLE {ks}.changes (id int PRIMARY KEY, body text) WITH cdc = true"
        )
        sequencer = MemorySequencer()
        stored: dict[int, float] = {}
        sent: dict[int, float] = {}
        base: list[int] = []

        def notify(stream: str, offset: int) -> None:
            if stream == "table:changes":
                now = time.perf_counter()
                first = base[0] if base else 0
                for n in range(len(stored), offset - first):
                    stored[n] = now

        source = CdcSource(
            session,
            ks,
            agents=[f"{node.cdc_agent.host}:{node.cdc_agent.port}"],
            tables=[cdc_table],
            store=store,
            sequencer=sequencer,
            notify=notify,
        )
        await source.create_schema()
        await trio.sleep(8)  # the agent restarts after the schema changes above
        async with trio.open_nursery() as nursery:
            await nursery.start(source.run)
            await source.wait_connected()
            head = await store.head("table:changes")
            base.append(0 if head is None else head.position.offset)

            db = Database(session, ks, capture=ChangeLog(store, sequencer))
            outbox: list[float] = []

            async def outbox_write(n: int) -> None:
                started = time.perf_counter()
                await db.insert(captured, {"id": n, "body": "x" * 100})
                outbox.append(time.perf_counter() - started)

            await paced(args.count, args.rate, outbox_write)
            insert = f"INSERT INTO {ks}.changes (id, body) VALUES (?, ?)"

            async def cdc_write(n: int) -> None:
                sent[n] = time.perf_counter()
                await session.execute(insert, (n, "x" * 100))

            await paced(args.count, args.rate, cdc_write)
            with trio.fail_after(120):
                while len(stored) < args.count:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        cdc = [stored[n] - sent[n] for n in range(args.count)]
        print(f"{args.count} writes at {args.rate:.0f}/s, agent poll {args.poll_ms} ms")
        print(f"outbox  write -> entry: {percentiles(outbox)}")
        print(f"cdc     write -> entry: {percentiles(cdc)}")
        print(f"cdc source stats: {source.stats}")
        await session.drop_keyspace(ks)


def run() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--poll-ms", type=int, default=5)
    args = parser.parse_args()
    node = CassandraServer.start(cdc_agent=True, cdc_agent_options={"poll-ms": str(args.poll_ms)})
    try:
        trio.run(main, args, node)
    finally:
        node.stop()


if __name__ == "__main__":
    run()

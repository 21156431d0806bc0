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
for one node; docs/cdc.md).

Run: ``python -m benchmarks.cdc_latency [--count 2000] [--rate 200] [--poll-ms 5]
[--single-reporter]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import trio
from websockets.trio.client import connect

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
                outbox=True,
                single_reporter=args.single_reporter,
            ),
        )
        await changes.create_schema()
        # The agent restarts after the schema changes above (it reloads the schema).
        await trio.to_thread.run_sync(node.cdc_agent.wait_ready)
        sent: dict[tuple[str, int], float] = {}
        received: dict[tuple[str, int], float] = {}
        done = {"captured": trio.Event(), "changes": trio.Event()}
        async with manager, connect(manager.url, ping_interval=None) as ws:
            await ws.recv()  # welcome
            for name in done:
                await ws.send(json.dumps({"type": "subscribe", "table": name}))
                reply = json.loads(await ws.recv())
                assert reply["type"] == "subscribed", reply
            assert changes.cdc is not None
            await changes.cdc.wait_connected()

            async def receive() -> None:
                while True:
                    message = json.loads(await ws.recv())
                    if message.get("type") != "data_update":
                        continue
                    key = (message["table"], message["event"]["key"]["id"])
                    received[key] = time.perf_counter()
                    if sum(1 for k in received if k[0] == key[0]) >= args.count:
                        done[key[0]].set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                body = "x" * 100

                async def outbox_write(n: int) -> None:
                    sent["captured", n] = time.perf_counter()
                    await db.insert(captured, {"id": n, "body": body})

                insert = f"INSERT INTO {ks}.changes (id, body) VALUES (?, ?)"

                async def cdc_write(n: int) -> None:
                    sent["changes", n] = time.perf_counter()
                    await session.execute(insert, (n, body))

                load_before = os.getloadavg()
                await paced(args.count, args.rate, outbox_write)
                with trio.fail_after(120):
                    await done["captured"].wait()
                await paced(args.count, args.rate, cdc_write)
                with trio.fail_after(120):
                    await done["changes"].wait()
                nursery.cancel_scope.cancel()
        outbox = [received["captured", n] - sent["captured", n] for n in range(args.count)]
        cdc = [received["changes", n] - sent["changes", n] for n in range(args.count)]
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"{args.count} writes at {args.rate:.0f}/s per path, agent poll {args.poll_ms} ms, "
            f"window {args.window}, "
            f"single_reporter {args.single_reporter}, {os.cpu_count()} CPUs, "
            f"load average before {load_before[0]:.2f}, after {load}"
        )
        print(f"outbox  write -> subscriber: {percentiles(outbox)}")
        print(f"cdc     write -> subscriber: {percentiles(cdc)}")
        print(f"cdc source stats: {changes.cdc.stats}")
        await session.drop_keyspace(ks)


def run() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--poll-ms", type=int, default=5)
    parser.add_argument("--single-reporter", action="store_true")
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

"""Write -> WebSocket subscriber through Cassandra's CDC, next to the outbox, in one run.

Starts its own single node WITH CDC and its agent (``commitlog_sync_period`` 2 ms, the agent
watching ``cdc_raw``; ``--watch off``: polling it every ``--poll-ms`` instead), and one
server whose `ChangeStreamManager` has both sources
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
on the same node after a warm-up (not measured): rounds of ``--warmup`` writes per path until
the JIT compiler threads of the node and the agent use less than ``--jit-settled`` of a core
(at most ``--warmup-rounds``; one round of 1,000 was too short: the first measured run then
paid several seconds of the node's JIT compilation; with a bar of 5 % it kept ~0.9 s). Each
run prints the time from the write to each step of `CdcSource` too (from the write
timestamp), and the CPU seconds of the processes and of their busiest threads.

Run: ``python -m benchmarks.cdc_latency [--count 2000] [--rate 200] [--watch on] [--poll-ms 5]
[--window 4] [--checkpoint-ms 50] [--single-reporter] [--cdc-only] [--runs 3] [--warmup 1000]
[--warmup-rounds 10] [--jit-settled 0.02]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
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


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; 0.0 elsewhere)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: Thread names of Cassandra's shared executor pool, whose threads rename themselves after
#: the stage they run a task of (summed as ``stages``).
SHARED_POOL = ("MutationStage", "Native-Transpor", "ReadStage", "CounterMutation", "ViewMutation")


def thread_cpu(pid: int | None) -> dict[str, float]:
    """CPU seconds so far of each thread of a process, as ``<name>#<tid>`` with the digits of
    the name left out (``C CompilerThre#123``: C1 and C2; Linux /proc; empty elsewhere)."""
    if pid is None:
        return {}
    spent: dict[str, float] = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = re.sub(r"[\d]+", "", stat[stat.index("(") + 1 : stat.rindex(")")]).strip(":-# ")
        if name.startswith(SHARED_POOL):
            name = "stages"  # Cassandra's shared pool: its threads take the stage's name
        fields = stat.rpartition(")")[2].split()
        spent[f"{name}#{tid}"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return spent


#: Python's garbage collector: seconds spent in collections of each generation so far.
GC_SECONDS = [0.0, 0.0, 0.0]
_gc_started = [0.0]


def _gc_timer(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        GC_SECONDS[info["generation"]] += time.perf_counter() - _gc_started[0]


gc.callbacks.append(_gc_timer)


def cpu_now(node: CassandraServer) -> dict[str, float]:
    """CPU seconds so far of the node, its agent and this process (server and client), and
    of the node's and the agent's threads (``node/<thread>``, ``agent/<thread>``) and of
    Python's full collections (``python/gc2``: wall-clock seconds)."""
    agent = node.cdc_agent.pid if node.cdc_agent is not None else None
    now = {
        "node": cpu_seconds(node.pid),
        "agent": cpu_seconds(agent),
        "python": time.process_time(),
        "python/gc2": GC_SECONDS[2],
    }
    for name, pid in (("node", node.pid), ("agent", agent)):
        for thread, seconds in thread_cpu(pid).items():
            now[f"{name}/{thread}"] = seconds
    return now


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
    node: CassandraServer,
) -> tuple[list[float], list[float], dict[str, list[float]]]:
    """One run: `count` writes through the outbox, then `count` plain writes to the CDC
    table; returns the latencies (s) of each path and, for CDC, of each consumer step (and,
    as steps ``cpu:<process>``, the CPU seconds each process spent in each path)."""
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

        cpu = [cpu_now(node)]
        await paced(args.count, args.rate, outbox_write)
        with trio.fail_after(120):
            await done["captured"].wait()
        cpu.append(cpu_now(node))
        changes.cdc.profile = profile
        await paced(args.count, args.rate, cdc_write)
        with trio.fail_after(120):
            await done["changes"].wait()
        cpu.append(cpu_now(node))
        changes.cdc.profile = None
        nursery.cancel_scope.cancel()
    outbox = [received["captured", n] - sent["captured", n] for n in range(args.count)]
    cdc = [received["changes", n] - sent["changes", n] for n in range(args.count)]
    # Each consumer step, from the change's write timestamp (the driver's, µs).
    steps: dict[str, list[float]] = {}
    for stamps, at in profile:
        for step, when in at.items():
            steps.setdefault(step, []).extend(when - ts / 1e6 for ts in stamps)
    # Per thread (tid), summed by name: a thread that ended before the end of the run is
    # left out (the node's pools start and stop threads).
    for process in cpu[2]:
        name = process.partition("#")[0]
        spent = steps.setdefault(f"cpu:{name}", [0.0, 0.0])
        spent[0] += cpu[1].get(process, 0.0) - cpu[0].get(process, 0.0)
        spent[1] += cpu[2][process] - cpu[1].get(process, 0.0)
    return outbox, cdc, {k: v for k, v in steps.items() if len(v) > 1}


def print_cpu(steps: dict[str, list[float]]) -> None:
    """The CPU seconds of each process, and of the threads that took the most (JIT
    compilers, compaction, flushes...), in the outbox path / the CDC path of a run."""
    print(
        "  CPU seconds (outbox path / CDC path): "
        + ", ".join(
            f"{step[4:]} {spent[0]:.1f}/{spent[1]:.1f}"
            for step, spent in steps.items()
            if step.startswith("cpu:") and "/" not in step
        )
    )
    # The threads that took the most (JIT compilers, compaction, flushes...).
    threads = sorted(
        (
            (step[4:], spent)
            for step, spent in steps.items()
            if step.startswith("cpu:") and "/" in step
        ),
        key=lambda item: -sum(item[1]),
    )
    print(
        "    by thread: "
        + ", ".join(
            f"{name} {spent[0]:.2f}/{spent[1]:.2f}"
            for name, spent in threads[:14]
            if sum(spent) >= 0.05
        )
    )


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
            # The first seconds after the node and the agent start (the JVMs' JIT compilers
            # on both: several seconds of CPU on a 2-core machine) are far slower than what
            # follows: not measured. Rounds of --warmup writes per path until the compiler
            # threads of the node and the agent use less than --jit-settled of a core.
            for round_ in range(1, args.warmup_rounds + 1 if args.warmup else 1):
                warm = argparse.Namespace(**{**vars(args), "count": args.warmup})
                started = trio.current_time()
                _, warm_cdc, warm_steps = await one_run(
                    warm, -round_, session, ks, db, captured, changes, ws, node
                )
                elapsed = trio.current_time() - started
                jit = sum(sum(v) for k, v in warm_steps.items() if "CompilerThre" in k)
                print(
                    f"warm-up round {round_}: {args.warmup} writes per path (not measured), "
                    f"JIT compilers {jit:.1f} s CPU in {elapsed:.0f} s, "
                    f"cdc {percentiles(warm_cdc)}"
                )
                print_cpu(warm_steps)
                if jit < args.jit_settled * elapsed:
                    break
            for run in range(args.runs):
                results.append(
                    await one_run(args, run + 1, session, ks, db, captured, changes, ws, node)
                )
                outbox, cdc, steps = results[-1]
                print(f"run {run + 1}, load average {fmt_load()}")
                print(f"  outbox  write -> subscriber: {percentiles(outbox)}")
                print(f"  cdc     write -> subscriber: {percentiles(cdc)}")
                for step, samples in steps.items():
                    if step.startswith("cpu:"):
                        continue
                    print(f"    cdc write -> {step:<10}: {percentiles(samples)}")
                print_cpu(steps)
        print(
            f"{args.count} writes at {args.rate:.0f}/s per path, {args.runs} run(s), agent watch "
            f"{args.watch}, poll {args.poll_ms} ms, window {args.window}, "
            f"checkpoint every {args.checkpoint_ms} ms, "
            f"single_reporter {args.single_reporter}, "
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
    parser.add_argument(
        "--watch", choices=("on", "off"), default="on", help="the agent's --watch (cdc_raw)"
    )
    parser.add_argument("--poll-ms", type=int, default=5, help="the agent's poll with --watch off")
    parser.add_argument("--single-reporter", action="store_true")
    parser.add_argument(
        "--cdc-only",
        action="store_true",
        help="Cdc(outbox=False): no outbox claims on the CDC table (the outbox path writes "
        "through its own Database to a table CDC does not record)",
    )
    parser.add_argument("--runs", type=int, default=1, help="runs on the same node")
    parser.add_argument(
        "--warmup", type=int, default=1000, help="writes per path of a warm-up round (0: none)"
    )
    parser.add_argument(
        "--warmup-rounds", type=int, default=10, help="warm-up rounds at most (not measured)"
    )
    parser.add_argument(
        "--jit-settled",
        type=float,
        default=0.02,
        help="warm-up ends after a round in which the JIT compiler threads of the node and the "
        "agent used less than this share of a core",
    )
    parser.add_argument("--window", type=int, default=4, help="the agent's --window")
    parser.add_argument(
        "--checkpoint-ms",
        type=int,
        default=50,
        help="the agent's --checkpoint-ms (0: the file written at every acknowledgement)",
    )
    args = parser.parse_args()
    options = {"poll-ms": str(args.poll_ms), "window": str(args.window), "watch": args.watch}
    options["checkpoint-ms"] = str(args.checkpoint_ms)
    node = CassandraServer.start(cdc_agent=True, cdc_agent_options=options)
    try:
        trio.run(main, args, node)
    finally:
        node.stop()


if __name__ == "__main__":
    run()

"""Cross-process fan-out: one room split over two trio_rt processes sharing Redis.

The fan-out harness of ``benchmarks.fanout`` (same load generator clients, same measurements:
deliveries/s from ``bench_start`` to the last delivery, latency = receipt - the server's
``time.monotonic_ns()`` stamp) run on three set-ups, alternating run by run:

* ``single``: one ``benchmarks.servers.trio_rt_server`` process (``MemoryBroker``), all clients
  on it: the single-process reference;
* ``single+redis``: one ``benchmarks.servers.trio_rt_redis_server`` process (``RedisBroker``),
  all clients on it: what the broker costs when nobody else listens;
* ``2 servers+redis``: two ``trio_rt_redis_server`` processes sharing one Redis, clients
  alternating between them (half each); ``bench_start`` goes to the first server, so half the
  deliveries are local to the broadcaster and half cross Redis to the other process.

One load-generator process holds all the clients (``benchmarks.loadgen``'s ``Client``; this
module's ``loadgen`` sub-command only adds the split over several ports: deliveries and
p50/p99 latency per server, the broadcaster's first). Redis is started
once for the whole benchmark (``trio_rt.testing.services.RedisServer``) unless ``--redis-url``.

Run: ``python -m benchmarks.fanout_cluster --clients 200 --messages 2000 --runs 3``
(about 2 minutes on 2 cores). Results go to ``benchmarks/results/`` unless ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.fanout import (
    REPO_ROOT,
    LineReader,
    cpu_seconds,
    machine_busy_seconds,
    stop,
    wait_until_idle,
    write_results,
)
from benchmarks.loadgen import add_run_arguments
from benchmarks.loadgen import run as run_clients
from benchmarks.proc import Proc

SINGLE = "single"
SINGLE_REDIS = "single+redis"
CLUSTER = "2 servers+redis"
SETUPS: dict[str, tuple[str, int]] = {  # label -> (server module, number of processes)
    SINGLE: ("benchmarks.servers.trio_rt_server", 1),
    SINGLE_REDIS: ("benchmarks.servers.trio_rt_redis_server", 1),
    CLUSTER: ("benchmarks.servers.trio_rt_redis_server", 2),
}


# ---------------------------------------------------------------------------------------------
# the load generator, over several ports (run as `python -m benchmarks.fanout_cluster loadgen`)


# the keys of loadgen's result that this benchmark reports, in its order (per port after
# "deliveries")
RESULT_KEYS = (
    "clients",
    "messages",
    "expected_deliveries",
    "deliveries",
    "deliveries_per_port",
    "completed",
    "elapsed_s",
    "deliveries_per_s",
    "latency_p50_us",
    "latency_p99_us",
    "latency_max_us",
    "latency_p50_us_per_port",
    "latency_p99_us_per_port",
    "loadgen_cpu_s",
    "loadgen_cpu_fraction",
    "drain_ms",
    "errors",
)


async def run_loadgen(
    host: str, ports: list[int], clients: int, messages: int, size: int, idle_timeout: float
) -> dict[str, Any]:
    """``benchmarks.loadgen.run`` over several ports, with this benchmark's result: the
    deliveries per port added, some of the generator's own figures left out."""
    result, conns = await run_clients(host, ports, clients, messages, size, idle_timeout)
    # per server: the clients on ports[0] get local deliveries, the others cross Redis
    result["deliveries_per_port"] = [
        sum(c.received for c in conns[k :: len(ports)]) for k in range(len(ports))
    ]
    return {key: result[key] for key in RESULT_KEYS}


def loadgen_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fanout_cluster loadgen")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ports", required=True, help="comma-separated")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    ports = [int(p) for p in args.ports.split(",")]
    result = asyncio.run(
        run_loadgen(args.host, ports, args.clients, args.messages, args.size, args.idle_timeout)
    )
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# the harness


def one_run(
    label: str, redis_url: str, redis_pid: int | None, args: argparse.Namespace
) -> dict[str, Any]:
    if args.wait_idle > 0:
        wait_until_idle(args.max_other, args.wait_idle)
    module, count = SETUPS[label]
    py = sys.executable
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}
    argv = [py, "-m", module, "--host", args.host, "--port", "0"]
    if module.endswith("redis_server"):
        argv += ["--redis-url", redis_url]
    servers: list[subprocess.Popen[str]] = []
    loadgen: Proc | None = None
    try:
        ports = []
        for k in range(count):
            server = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True
            )
            servers.append(server)
            assert server.stdout is not None
            ports.append(
                int(LineReader(server.stdout, f"server {k}").wait_for("READY", 60).split()[1])
            )
        server_ps = [psutil.Process(s.pid) for s in servers]
        redis_ps = psutil.Process(redis_pid) if redis_pid is not None else None

        loadgen = Proc(
            [
                *("-m", "benchmarks.fanout_cluster", "loadgen", "--host", args.host),
                *("--ports", ",".join(map(str, ports)), "--clients", str(args.clients)),
                *("--messages", str(args.messages), "--size", str(args.size)),
            ],
            "loadgen",
        )
        loadgen.out.wait_for("JOINED", 120)
        time.sleep(0.5)

        cpu_before = [cpu_seconds(p) for p in server_ps]
        redis_before = cpu_seconds(redis_ps) if redis_ps is not None else 0.0
        busy_before = machine_busy_seconds()
        wall_before = time.monotonic()
        loadgen.tell("GO")
        line = loadgen.out.wait_for("RESULT", 600)
        wall = time.monotonic() - wall_before
        server_cpu = [cpu_seconds(p) - b for p, b in zip(server_ps, cpu_before, strict=True)]
        redis_cpu = (cpu_seconds(redis_ps) - redis_before) if redis_ps is not None else 0.0
        busy = machine_busy_seconds() - busy_before
        result: dict[str, Any] = json.loads(line.split(" ", 1)[1])
        loadgen.popen.wait(timeout=30)
    finally:
        if loadgen is not None:
            stop(loadgen.popen)
        for server in servers:
            stop(server)
    deliveries = result["deliveries"]
    total_server = sum(server_cpu)
    result.update(
        label=label,
        server_cpu_s=server_cpu,
        server_cpu_us_per_delivery=total_server / deliveries * 1e6 if deliveries else None,
        redis_cpu_s=redis_cpu if label != SINGLE else 0.0,
        machine_busy_cores=busy / wall,
        other_busy_cores=max(0.0, busy - total_server - redis_cpu - result["loadgen_cpu_s"]) / wall,
    )
    result["noisy"] = result["other_busy_cores"] > args.max_other
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    per: dict[str, dict[str, Any]] = {}
    for label in SETUPS:
        mine = [r for r in runs if r["label"] == label]
        per[label] = {
            "deliveries_per_s": statistics.median(r["deliveries_per_s"] for r in mine),
            "latency_p50_us": statistics.median(r["latency_p50_us"] for r in mine),
            "latency_p99_us": statistics.median(r["latency_p99_us"] for r in mine),
            "server_cpu_us_per_delivery": statistics.median(
                r["server_cpu_us_per_delivery"] for r in mine
            ),
            "redis_cpu_s": statistics.median(r["redis_cpu_s"] for r in mine),
            "loadgen_cpu_fraction": statistics.median(r["loadgen_cpu_fraction"] for r in mine),
            "other_busy_cores": statistics.median(r["other_busy_cores"] for r in mine),
            "runs": len(mine),
            "incomplete_runs": sum(1 for r in mine if not r["completed"]),
            "noisy_runs": sum(1 for r in mine if r["noisy"]),
        }
    reference = per[SINGLE]["deliveries_per_s"]
    for label in SETUPS:
        per[label]["ratio_to_single"] = per[label]["deliveries_per_s"] / reference
        pairs = zip(
            [r for r in runs if r["label"] == label],
            [r for r in runs if r["label"] == SINGLE],
            strict=False,
        )
        per[label]["ratio_to_single_pairwise"] = [
            a["deliveries_per_s"] / b["deliveries_per_s"] for a, b in pairs
        ]
    return per


def print_table(per: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    runs = next(iter(per.values()))["runs"]
    print()
    print(
        f"cross-process fan-out: {args.clients} clients x {args.messages} broadcasts of"
        f" {args.size}-byte pad (medians of {runs} runs)"
    )
    header = (
        f"{'set-up':<17}{'deliveries/s':>13}{'ratio':>7}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'srv us/dlv':>11}{'redis s':>9}{'gen CPU':>9}{'other':>7}"
    )
    print(header)
    print("-" * len(header))
    for label, k in per.items():
        flag = f"  ({k['incomplete_runs']} incomplete)" if k["incomplete_runs"] else ""
        flag += f"  ({k['noisy_runs']} noisy)" if k["noisy_runs"] else ""
        print(
            f"{label:<17}{k['deliveries_per_s']:>13,.0f}{k['ratio_to_single']:>7.2f}"
            f"{k['latency_p50_us'] / 1e3:>9.2f}{k['latency_p99_us'] / 1e3:>9.2f}"
            f"{k['server_cpu_us_per_delivery']:>11.2f}{k['redis_cpu_s']:>9.2f}"
            f"{k['loadgen_cpu_fraction']:>9.2f}{k['other_busy_cores']:>7.2f}{flag}"
        )
    print("(ratio: median deliveries/s / single's; srv us/dlv: CPU of all server processes per")
    print(" delivery; redis s: redis-server CPU seconds during the run)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["loadgen"]:
        return loadgen_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=70)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")
    parser.add_argument("--max-other", type=float, default=0.25)
    parser.add_argument("--wait-idle", type=float, default=10.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from trio_rt.testing.services import RedisServer

    started = dt.datetime.now(dt.UTC)
    redis: RedisServer | None = None
    if args.redis_url is None:
        redis = RedisServer.start()
        redis_url, redis_pid = redis.url, redis.pid
    else:
        redis_url, redis_pid = args.redis_url, None
    runs: list[dict[str, Any]] = []
    try:
        for run in range(args.runs):
            for label in SETUPS:
                result = one_run(label, redis_url, redis_pid, args)
                result["run"] = run
                runs.append(result)
                print(
                    f"run {run + 1}/{args.runs} {label:<16}"
                    f" {result['deliveries_per_s']:>10,.0f} dlv/s"
                    f"  p50 {result['latency_p50_us'] / 1e3:6.2f} ms"
                    f"  p99 {result['latency_p99_us'] / 1e3:6.2f} ms"
                    f"  servers {result['server_cpu_us_per_delivery']:5.2f} us/dlv"
                    f"  redis {result['redis_cpu_s']:.2f} s"
                    f"  per server {result['deliveries_per_port']}"
                    + "  p99 per server "
                    + "/".join(f"{v / 1e3:.1f}" for v in result["latency_p99_us_per_port"])
                    + " ms"
                    f"  other {result['other_busy_cores']:.2f}"
                    + ("" if result["completed"] else f"  INCOMPLETE {result['deliveries']}")
                    + ("  NOISY" if result["noisy"] else ""),
                    flush=True,
                )
                for error in result["errors"]:
                    print(f"    error: {error}", file=sys.stderr)
    finally:
        if redis is not None:
            redis.stop()

    per = summarize(runs)
    print_table(per, args)
    write_results(
        "fanout-cluster",
        started,
        {
            "clients": args.clients,
            "messages": args.messages,
            "size": args.size,
            "runs": args.runs,
        },
        {"summary": per, "runs": runs},
        args.json,
        packages=("trio", "websockets", "redis"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

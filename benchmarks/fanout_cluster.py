"""Cross-process fan-out: one room over one or two trio_rt processes, with and without Redis.

The fan-out harness of ``benchmarks.fanout`` (same load generator clients, same measurements:
deliveries/s from ``bench_start`` to the last delivery, latency = receipt - the server's
``time.monotonic_ns()`` stamp) run on these set-ups, alternating run by run:

* ``single``: one ``benchmarks.servers.trio_rt_server`` process (``MemoryBroker``), all clients
  on it: the single-process reference;
* ``single+redis``: one ``benchmarks.servers.trio_rt_redis_server`` process (``RedisBroker``),
  all clients on it: what the broker costs when nobody else listens;
* ``2 servers+redis``: two ``trio_rt_redis_server`` processes sharing one Redis, clients
  alternating between them (half each); ``bench_start`` goes to the first server (A), so half
  the deliveries are local to the broadcaster and half cross Redis to the other process (B);
* ``recv probe``: the same two processes, every client on A but one on B: B's CPU per message
  is then its receive path (Redis socket to the manager's envelope) plus one delivery;
* ``2 workers+redis``: ``trio-rt serve --workers 2`` (a supervisor and two worker processes of
  ``trio_rt_redis_server:build_app`` on one port, ``SO_REUSEPORT``), every client on that one
  port, spread by the kernel; A is the worker that client 0 (the broadcaster) landed on, B the
  other; the load generator tells them apart by the welcome's ``server_id`` (``...-w<n>``). The
  supervisor's CPU is not counted (it is idle while the workers serve; ``supervisor_cpu_s``).

Each in two modes: ``burst`` (the broadcaster awaits each ``broadcast_to_room``, as fast as it
goes) and ``paced`` (``--rate`` broadcasts per second on an absolute schedule).

Per run and server: deliveries, p50/p99 latency (A's clients: local to the broadcast; B's:
through Redis), CPU seconds. Derived: server CPU per delivery (all servers), B's CPU per
received message, and the p99 ratio B/A. The summary also estimates B's cost per message
before its fan-out: B's CPU per message minus its deliveries per message times the
single-process CPU per delivery of the same mode (``before fan-out``); the probe measures
nearly the same thing directly.

``--compare DIR`` runs every set-up a second time with the code in DIR (a tree of another
commit, e.g. ``git archive main | tar -x -C DIR``), alternating with this tree, so that the
two are measured side by side on the same machine state. Servers run with ``PYTHONPATH=DIR``;
the load generator is always this tree's.

One load-generator process holds all the clients (``benchmarks.loadgen``'s ``Client``; this
module's ``loadgen`` sub-command adds the split over several ports). Redis is started once for
the whole benchmark (``trio_rt.testing.services.RedisServer``) unless ``--redis-url``.

Run: ``python -m benchmarks.fanout_cluster --clients 200 --messages 2000 --runs 3``
(add ``--compare /tmp/main-tree``; about 1 minute per run and code on 2 cores). Results go to
``benchmarks/results/`` unless ``--json``.
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
    machine_busy_seconds,
    stop,
    wait_until_idle,
    write_results,
)
from benchmarks.loadgen import Client, add_run_arguments, percentile
from benchmarks.loadgen import run as run_clients
from benchmarks.proc import Proc
from benchmarks.servers.trio_rt_redis_server import REDIS_URL_ENV

SINGLE = "single"
SINGLE_REDIS = "single+redis"
CLUSTER = "2 servers+redis"
PROBE = "recv probe"
WORKERS = "2 workers+redis"
SETUPS: dict[str, tuple[str, int]] = {  # label -> (server module, number of processes)
    SINGLE: ("benchmarks.servers.trio_rt_server", 1),
    SINGLE_REDIS: ("benchmarks.servers.trio_rt_redis_server", 1),
    CLUSTER: ("benchmarks.servers.trio_rt_redis_server", 2),
    PROBE: ("benchmarks.servers.trio_rt_redis_server", 2),
    WORKERS: ("benchmarks.servers.trio_rt_redis_server:build_app", 2),  # `trio-rt serve` app
}
WORKER_SUFFIX = "-w"  # a worker's server_id ends in -w<n>
BURST, PACED = "burst", "paced"
NEW = "this tree"
OLD = "compared"


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
    "clients_per_port",
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


class WorkerClient(Client):
    """A client that knows which worker took it (the welcome's ``server_id`` ends in
    ``-w<n>``) and keeps its latencies apart from the other workers' (key ``-1 - n``)."""

    worker: int | None = None

    def control_message(self, payload: bytes | bytearray) -> None:
        message = json.loads(payload)
        if message.get("type") == "welcome" and self.worker is None:
            server_id = str(message.get("server_id"))
            self.worker = int(server_id.rsplit(WORKER_SUFFIX, 1)[1])
            self.latencies = self.stats.latencies_for(-1 - self.worker)
        self.control.put_nowait(message)


def split_by_worker(result: dict[str, Any], conns: list[Any]) -> None:
    """Per-port figures of a one-port run replaced by per-worker ones: A = the worker of
    client 0 (the broadcaster), then the others by number; ``workers`` names them."""
    stats = conns[0].stats
    order = [conns[0].worker, *sorted({c.worker for c in conns} - {conns[0].worker})]
    by_worker = [sorted(stats.latencies_by_port.get(-1 - w, ())) for w in order]
    result["latency_p50_us_per_port"] = [percentile(v, 0.50) / 1e3 for v in by_worker]
    result["latency_p99_us_per_port"] = [percentile(v, 0.99) / 1e3 for v in by_worker]
    result["deliveries_per_port"] = [sum(c.received for c in conns if c.worker == w) for w in order]
    result["clients_per_port"] = [sum(1 for c in conns if c.worker == w) for w in order]
    result["workers"] = order


async def run_loadgen(
    host: str,
    ports: list[int],
    weights: list[int],
    clients: int,
    messages: int,
    size: int,
    idle_timeout: float,
    rate: float,
    by_worker: bool = False,
) -> dict[str, Any]:
    """``benchmarks.loadgen.run`` over several ports (``weights[k]`` clients on ``ports[k]`` in
    each round), with this benchmark's result: deliveries and clients per port added
    (`by_worker`: per worker of one port instead, `split_by_worker`)."""
    sequence = [port for port, weight in zip(ports, weights, strict=True) for _ in range(weight)]
    result, conns = await run_clients(
        host,
        sequence,
        clients,
        messages,
        size,
        idle_timeout,
        rate=rate,
        client_class=WorkerClient if by_worker else Client,
    )
    # per server: the clients on ports[0] get local deliveries, the others cross Redis
    result["deliveries_per_port"] = [sum(c.received for c in conns if c.port == p) for p in ports]
    result["clients_per_port"] = [sum(1 for c in conns if c.port == p) for p in ports]
    if by_worker:
        split_by_worker(result, conns)
    out = {key: result[key] for key in RESULT_KEYS}
    if by_worker:
        out["workers"] = result["workers"]
    return out


def loadgen_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fanout_cluster loadgen")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ports", required=True, help="comma-separated")
    parser.add_argument("--weights", default=None, help="comma-separated, one per port")
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--by-worker", action="store_true", help="one port, split per worker")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    ports = [int(p) for p in args.ports.split(",")]
    weights = [int(w) for w in args.weights.split(",")] if args.weights else [1] * len(ports)
    result = asyncio.run(
        run_loadgen(
            args.host,
            ports,
            weights,
            args.clients,
            args.messages,
            args.size,
            args.idle_timeout,
            args.rate,
            args.by_worker,
        )
    )
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# the harness


def cpu_seconds(proc: psutil.Process) -> float:
    """CPU time of `proc`'s threads in ns resolution (``/proc/<pid>/task/*/schedstat``; the
    clock ticks of ``/proc/<pid>/stat`` are 10 ms, too coarse for a receiver's share)."""
    total = 0
    try:
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            with open(task / "schedstat") as f:
                total += int(f.read().split()[0])
    except FileNotFoundError:  # not Linux, or the process is gone
        times = proc.cpu_times()
        return float(times.user + times.system)
    return total / 1e9


def worker_processes(supervisor_pid: int) -> dict[int, psutil.Process]:
    """The workers of a ``trio-rt serve --workers N`` supervisor, by worker number."""
    out: dict[int, psutil.Process] = {}
    for child in psutil.Process(supervisor_pid).children():
        number = child.environ().get("TRIO_RT_WORKER_ID")
        if number is not None:
            out[int(number)] = child
    return out


def one_run(
    label: str,
    mode: str,
    code: str,
    tree: Path,
    redis_url: str,
    redis_pid: int | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    if args.wait_idle > 0:
        wait_until_idle(args.max_other, args.wait_idle)
    module, count = SETUPS[label]
    py = sys.executable
    pythonpath = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}
    workers = label == WORKERS
    if workers:  # one `trio-rt serve --workers 2` on one port
        argv = [py, "-m", "trio_rt", "--log-level", "ERROR", "serve", module]
        argv += ["--workers", str(count), "--host", args.host, "--port", "0"]
        env[REDIS_URL_ENV] = redis_url
    else:
        argv = [py, "-m", module, "--host", args.host, "--port", "0"]
        if module.endswith("redis_server"):
            argv += ["--redis-url", redis_url]
    weights = [args.clients - 1, 1] if label == PROBE else [1] * count
    rate = args.rate if mode == PACED else 0.0
    servers: list[subprocess.Popen[str]] = []
    loadgen: Proc | None = None
    try:
        ports = []
        for k in range(1 if workers else count):
            server = subprocess.Popen(argv, cwd=tree, env=env, stdout=subprocess.PIPE, text=True)
            servers.append(server)
            assert server.stdout is not None
            reader = LineReader(server.stdout, f"server {k}")
            if workers:
                line = reader.wait_for("trio_rt listening on", 120)
                ports.append(int(line.split("ws://", 1)[1].split("/")[0].rsplit(":", 1)[1]))
            else:
                ports.append(int(reader.wait_for("READY", 60).split()[1]))
        if workers:
            weights = [1]
            worker_ps = worker_processes(servers[0].pid)
            server_ps = [worker_ps[n] for n in sorted(worker_ps)]
            supervisor_ps = psutil.Process(servers[0].pid)
        else:
            server_ps = [psutil.Process(s.pid) for s in servers]
        redis_ps = psutil.Process(redis_pid) if redis_pid is not None else None

        loadgen = Proc(
            [
                *("-m", "benchmarks.fanout_cluster", "loadgen", "--host", args.host),
                *("--ports", ",".join(map(str, ports)), "--clients", str(args.clients)),
                *("--weights", ",".join(map(str, weights)), "--rate", str(rate)),
                *("--messages", str(args.messages), "--size", str(args.size)),
                *(("--by-worker",) if workers else ()),
            ],
            "loadgen",
        )
        loadgen.out.wait_for("JOINED", 120)
        time.sleep(0.5)

        load_before = os.getloadavg()[0]
        supervisor_before = cpu_seconds(supervisor_ps) if workers else 0.0
        cpu_before = [cpu_seconds(p) for p in server_ps]
        redis_before = cpu_seconds(redis_ps) if redis_ps is not None else 0.0
        busy_before = machine_busy_seconds()
        wall_before = time.monotonic()
        loadgen.tell("GO")
        line = loadgen.out.wait_for("RESULT", 600)
        wall = time.monotonic() - wall_before
        server_cpu = [cpu_seconds(p) - b for p, b in zip(server_ps, cpu_before, strict=True)]
        supervisor_cpu = (cpu_seconds(supervisor_ps) - supervisor_before) if workers else 0.0
        redis_cpu = (cpu_seconds(redis_ps) - redis_before) if redis_ps is not None else 0.0
        busy = machine_busy_seconds() - busy_before
        result: dict[str, Any] = json.loads(line.split(" ", 1)[1])
        loadgen.popen.wait(timeout=30)
    finally:
        if loadgen is not None:
            stop(loadgen.popen)
        for server in servers:
            stop(server)
    if workers:  # A = the broadcaster's worker: its CPU first, as the latencies
        server_cpu = [server_cpu[n] for n in result["workers"]]
    deliveries = result["deliveries"]
    total_server = sum(server_cpu)
    messages = result["messages"]
    p99 = result["latency_p99_us_per_port"]
    result.update(
        label=label,
        mode=mode,
        code=code,
        rate=rate,
        load_average=load_before,
        server_cpu_s=server_cpu,
        supervisor_cpu_s=supervisor_cpu,
        server_cpu_us_per_delivery=total_server / deliveries * 1e6 if deliveries else None,
        # the receiving server (B): its CPU per message it got from Redis
        receiver_cpu_us_per_message=(server_cpu[1] / messages * 1e6 if count > 1 else None),
        receiver_deliveries_per_message=(
            result["deliveries_per_port"][1] / messages if count > 1 else None
        ),
        p99_ratio_remote_local=(p99[1] / p99[0] if count > 1 and p99[0] else None),
        redis_cpu_s=redis_cpu if label != SINGLE else 0.0,
        machine_busy_cores=busy / wall,
        other_busy_cores=max(0.0, busy - total_server - redis_cpu - result["loadgen_cpu_s"]) / wall,
    )
    result["noisy"] = result["other_busy_cores"] > args.max_other
    return result


def _median(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Medians per (set-up, mode, code), keyed ``"<set-up> | <mode> | <code>"``."""
    per: dict[str, dict[str, Any]] = {}
    keys = dict.fromkeys((r["label"], r["mode"], r["code"]) for r in runs)
    for label, mode, code in keys:
        mine = [r for r in runs if (r["label"], r["mode"], r["code"]) == (label, mode, code)]
        p50 = list(zip(*(r["latency_p50_us_per_port"] for r in mine), strict=True))
        p99 = list(zip(*(r["latency_p99_us_per_port"] for r in mine), strict=True))
        per[f"{label} | {mode} | {code}"] = {
            "label": label,
            "mode": mode,
            "code": code,
            "deliveries_per_s": _median([r["deliveries_per_s"] for r in mine]),
            "latency_p99_us": _median([r["latency_p99_us"] for r in mine]),
            "latency_p50_us_per_server": [_median(list(v)) for v in p50],
            "latency_p99_us_per_server": [_median(list(v)) for v in p99],
            "p99_ratio_remote_local": _median([r["p99_ratio_remote_local"] for r in mine]),
            "server_cpu_us_per_delivery": _median([r["server_cpu_us_per_delivery"] for r in mine]),
            "server_cpu_s": [
                _median(list(v)) for v in zip(*(r["server_cpu_s"] for r in mine), strict=True)
            ],
            "receiver_cpu_us_per_message": _median(
                [r["receiver_cpu_us_per_message"] for r in mine]
            ),
            "receiver_deliveries_per_message": _median(
                [r["receiver_deliveries_per_message"] for r in mine]
            ),
            "redis_cpu_s": _median([r["redis_cpu_s"] for r in mine]),
            "loadgen_cpu_fraction": _median([r["loadgen_cpu_fraction"] for r in mine]),
            "other_busy_cores": _median([r["other_busy_cores"] for r in mine]),
            "load_average": _median([r["load_average"] for r in mine]),
            "runs": len(mine),
            "incomplete_runs": sum(1 for r in mine if not r["completed"]),
            "noisy_runs": sum(1 for r in mine if r["noisy"]),
        }
    # B's cost per message before its fan-out: its CPU per message minus what its deliveries
    # cost at the single process's CPU per delivery (same mode and code).
    for k in per.values():
        single = per.get(f"{SINGLE} | {k['mode']} | {k['code']}")
        recv, dpm = k["receiver_cpu_us_per_message"], k["receiver_deliveries_per_message"]
        k["receiver_before_fanout_us"] = (
            recv - dpm * single["server_cpu_us_per_delivery"]
            if single and recv is not None and dpm is not None
            else None
        )
    return per


def _ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1e3:.1f}"


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(per: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    runs = max(k["runs"] for k in per.values())
    print()
    print(
        f"cross-process fan-out: {args.clients} clients x {args.messages} broadcasts of"
        f" {args.size}-byte pad; paced = {args.rate:g}/s (medians of {runs} runs)"
    )
    header = (
        f"{'set-up':<17}{'mode':<7}{'code':<11}{'dlv/s':>9}{'p99 A':>8}{'p99 B':>8}"
        f"{'B/A':>6}{'us/dlv':>8}{'B us/msg':>9}{'B pre-fo':>9}{'CPU A,B s':>12}{'load':>6}"
    )
    print(header)
    print("-" * len(header))
    for k in per.values():
        p99 = k["latency_p99_us_per_server"]
        cpu = ",".join(f"{c:.2f}" for c in k["server_cpu_s"])
        flag = f"  ({k['incomplete_runs']} incomplete)" if k["incomplete_runs"] else ""
        flag += f"  ({k['noisy_runs']} noisy)" if k["noisy_runs"] else ""
        print(
            f"{k['label']:<17}{k['mode']:<7}{k['code']:<11}{k['deliveries_per_s']:>9,.0f}"
            f"{_ms(p99[0]):>8}{_ms(p99[1] if len(p99) > 1 else None):>8}"
            f"{_num(k['p99_ratio_remote_local'], '.2f'):>6}"
            f"{_num(k['server_cpu_us_per_delivery'], '.1f'):>8}"
            f"{_num(k['receiver_cpu_us_per_message'], '.0f'):>9}"
            f"{_num(k['receiver_before_fanout_us'], '.0f'):>9}"
            f"{cpu:>12}{_num(k['load_average'], '.1f'):>6}{flag}"
        )
    print(
        "(p99 A / B: the broadcasting server's clients / the other server's, in ms; us/dlv: CPU"
        " of all servers per delivery;\n B us/msg: the receiving server's CPU per message;"
        " B pre-fo: that minus its deliveries at the single\n process's CPU per delivery (the"
        " probe's B us/msg measures the same with one delivery); load: 1-min load average)"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["loadgen"]:
        return loadgen_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=70)
    parser.add_argument("--rate", type=float, default=250.0, help="paced mode: broadcasts/s")
    parser.add_argument("--modes", default=f"{BURST},{PACED}")
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated labels")
    parser.add_argument("--compare", type=Path, default=None, help="another tree, side by side")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")
    parser.add_argument("--max-other", type=float, default=0.25)
    parser.add_argument("--wait-idle", type=float, default=10.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    setups = [s.strip() for s in args.setups.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    unknown = {*setups} - set(SETUPS) | {*modes} - {BURST, PACED}
    if unknown:
        parser.error(f"unknown set-up or mode: {sorted(unknown)}")
    codes: list[tuple[str, Path]] = [(NEW, REPO_ROOT)]
    if args.compare is not None:
        codes.append((OLD, args.compare.resolve()))

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
            for mode in modes:
                for label in setups:
                    # alternate which code goes first, run by run
                    for code, tree in codes if run % 2 == 0 else codes[::-1]:
                        result = one_run(label, mode, code, tree, redis_url, redis_pid, args)
                        result["run"] = run
                        runs.append(result)
                        p99 = result["latency_p99_us_per_port"]
                        print(
                            f"run {run + 1}/{args.runs} {label:<16} {mode:<6} {code:<10}"
                            f" {result['deliveries_per_s']:>9,.0f} dlv/s"
                            f"  p99 {'/'.join(_ms(v) for v in p99)} ms"
                            f"  CPU {'/'.join(f'{c:.2f}' for c in result['server_cpu_s'])} s"
                            f"  {_num(result['server_cpu_us_per_delivery'], '.1f')} us/dlv"
                            f"  B {_num(result['receiver_cpu_us_per_message'], '.0f')} us/msg"
                            f"  load {result['load_average']:.1f}"
                            f"  other {result['other_busy_cores']:.2f}"
                            + (
                                ""
                                if result["completed"]
                                else f"  INCOMPLETE {result['deliveries']}"
                            )
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
            "rate": args.rate,
            "compare": str(args.compare) if args.compare else None,
        },
        {"summary": per, "runs": runs},
        args.json,
        packages=("trio", "websockets", "hiredis", "redis", "trio_asyncio"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

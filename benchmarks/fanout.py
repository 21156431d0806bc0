"""Fan-out benchmark: one room, N clients (another process), M broadcasts.

For each run and each server kind (alternating, so machine noise hits every kind), the harness

1. starts the server as a subprocess on a free port (it prints ``READY <port>``);
2. starts ``benchmarks.loadgen``, which opens N WebSocket clients (no compression), has them
   all join the room "bench" and prints ``JOINED``;
3. reads the server's CPU time (psutil), tells the generator ``GO``: one client sends
   ``{"type": "bench_start", "count": M, "size": S}`` and the server broadcasts M messages
   ``{"type": "bench", "seq": i, "t": <time.monotonic_ns()>, "pad": "x" * S}`` to the room;
4. when every client has its M messages, reads the server's CPU time again and collects the
   generator's ``RESULT``.

Measured: deliveries/s = deliveries / (time from the generator sending ``bench_start`` to the
last delivery); latency per delivery = time of receipt at the client - ``t`` (CLOCK_MONOTONIC
is system-wide on Linux, so it compares across processes); server CPU (user + system) per
delivery; the generator's CPU as a fraction of the wall time (its headroom); and connection
setup: the server's CPU from ``READY`` to ``JOINED`` (+0.5 s) per client (handshake, welcome,
``join_room``/``room_joined``).

Run: ``python -m benchmarks.fanout --clients 200 --messages 2000 --runs 5 [--size 70]
[--servers trio_rt,baseline] [--json out.json]``. The first kind in ``--servers`` is the
numerator of the ratio. Results go to ``benchmarks/results/`` (gitignored) unless ``--json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

SERVERS: dict[str, str] = {
    "trio_rt": "benchmarks.servers.trio_rt_server",
    "baseline": "benchmarks.servers.baseline_websockets",
    # not a contender: checks the generator's headroom (see its docstring)
    "raw": "benchmarks.servers.raw_calibration",
    # peers in other languages, built into a cache by their launchers (benchmarks.peers)
    "node_ws": "benchmarks.servers.node_ws",
    "go_gorilla": "benchmarks.servers.go_gorilla",
}


class LineReader:
    """Reads a pipe's lines in a thread, so the harness can wait for one with a timeout."""

    def __init__(self, stream: IO[str], name: str) -> None:
        self.name = name
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, prefix: str, timeout: float) -> str:
        """The first line starting with ``prefix``; other lines are echoed to stderr."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: no {prefix!r} line within {timeout} s")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{self.name} exited before printing {prefix!r}")
            if line.startswith(prefix):
                return line
            print(f"[{self.name}] {line}", file=sys.stderr)


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def machine_busy_seconds() -> float:
    """CPU seconds spent not idle, summed over all cores, since boot."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def wait_until_idle(max_busy: float, timeout: float) -> float:
    """Wait (up to ``timeout`` s) until the rest of the machine uses < ``max_busy`` cores.

    Returns the last measured busy cores. Other work on a 2-core machine skews a run more
    than anything the servers do.
    """
    deadline = time.monotonic() + timeout
    while True:
        before = machine_busy_seconds()
        time.sleep(1.0)
        busy = machine_busy_seconds() - before
        if busy < max_busy or time.monotonic() >= deadline:
            return busy


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def one_run(
    kind: str,
    host: str,
    clients: int,
    messages: int,
    size: int,
    max_other: float,
    wait: float,
    *,
    server_args: Sequence[str] = (),
    loadgen: str = "benchmarks.loadgen",
    loadgen_args: Sequence[str] = (),
    label: str | None = None,
) -> dict[str, Any]:
    """One measured run: `kind` (a SERVERS name or a server module, with `server_args`)
    against the `loadgen` module (with `loadgen_args`); see the module docstring."""
    idle_busy = wait_until_idle(max_other, wait) if wait > 0 else None
    py = sys.executable
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}
    server = subprocess.Popen(
        [py, "-m", SERVERS.get(kind, kind), "--host", host, "--port", "0", *server_args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    generator: subprocess.Popen[str] | None = None
    try:
        assert server.stdout is not None
        server_out = LineReader(server.stdout, f"{label or kind} server")
        port = int(server_out.wait_for("READY", 60).split()[1])
        server_ps = psutil.Process(server.pid)
        server_cpu_ready = cpu_seconds(server_ps)

        generator = subprocess.Popen(
            [
                py,
                "-m",
                loadgen,
                "--host",
                host,
                "--port",
                str(port),
                "--clients",
                str(clients),
                "--messages",
                str(messages),
                "--size",
                str(size),
                *loadgen_args,
            ],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert generator.stdout is not None and generator.stdin is not None
        loadgen_out = LineReader(generator.stdout, "loadgen")
        loadgen_out.wait_for("JOINED", 120)
        time.sleep(0.5)  # let the join traffic settle

        server_cpu_before = cpu_seconds(server_ps)
        # connection setup: handshake, welcome, join_room and room_joined of every client
        setup_cpu = server_cpu_before - server_cpu_ready
        server_sys_before = server_ps.cpu_times().system
        busy_before = machine_busy_seconds()
        wall_before = time.monotonic()
        generator.stdin.write("GO\n")
        generator.stdin.flush()
        line = loadgen_out.wait_for("RESULT", 600)
        wall = time.monotonic() - wall_before
        server_cpu = cpu_seconds(server_ps) - server_cpu_before
        server_sys = server_ps.cpu_times().system - server_sys_before
        busy = machine_busy_seconds() - busy_before

        result: dict[str, Any] = json.loads(line.split(" ", 1)[1])
        generator.wait(timeout=30)
    finally:
        if generator is not None:
            stop(generator)
        stop(server)

    deliveries = result["deliveries"]
    result.update(
        kind=label or kind,
        server_cpu_s=server_cpu,
        server_system_s=server_sys,  # the kernel's share: sends, wake-ups
        server_cpu_fraction=server_cpu / wall,
        server_cpu_us_per_delivery=server_cpu / deliveries * 1e6 if deliveries else None,
        setup_cpu_s=setup_cpu,
        # psutil's CPU times tick every 10 ms: at 200 clients, +-0.05 ms per connection
        setup_cpu_us_per_connection=setup_cpu / clients * 1e6,
        machine_busy_cores=busy / wall,
        # CPU used by everything else on the machine during the window (noise), in cores
        other_busy_cores=max(0.0, busy - server_cpu - result["loadgen_cpu_s"]) / wall,
        busy_cores_before=idle_busy,
    )
    result["noisy"] = result["other_busy_cores"] > max_other
    return result


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(runs: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    per_kind: dict[str, dict[str, float]] = {}
    for label in labels:
        mine = [r for r in runs if r["label"] == label]
        per_kind[label] = {
            "deliveries_per_s": median([r["deliveries_per_s"] for r in mine]),
            "latency_p50_us": median([r["latency_p50_us"] for r in mine]),
            "latency_p99_us": median([r["latency_p99_us"] for r in mine]),
            "server_cpu_us_per_delivery": median([r["server_cpu_us_per_delivery"] for r in mine]),
            "server_cpu_fraction": median([r["server_cpu_fraction"] for r in mine]),
            "loadgen_cpu_fraction": median([r["loadgen_cpu_fraction"] for r in mine]),
            "other_busy_cores": median([r["other_busy_cores"] for r in mine]),
            "runs": len(mine),
            "incomplete_runs": sum(1 for r in mine if not r["completed"]),
            "noisy_runs": sum(1 for r in mine if r["noisy"]),
        }
    a, b = labels[0], labels[1] if len(labels) > 1 else labels[0]
    pairwise = [
        ra["deliveries_per_s"] / rb["deliveries_per_s"]
        for ra, rb in zip(
            [r for r in runs if r["label"] == a], [r for r in runs if r["label"] == b], strict=False
        )
    ]
    return {
        "ratio_of": f"{a}/{b}",
        # ratio of the median deliveries/s; and the median of the per-run (paired) ratios
        "ratio": per_kind[a]["deliveries_per_s"] / per_kind[b]["deliveries_per_s"],
        "ratio_pairwise_median": median(pairwise),
        "ratio_pairwise": pairwise,
        # the same comparison in server CPU per delivery (b's / a's: > 1 means a is cheaper);
        # less sensitive to other load on the machine than deliveries/s
        # (None when a run was too short for the CPU clock to move)
        "cpu_ratio": per_kind[b]["server_cpu_us_per_delivery"]
        / per_kind[a]["server_cpu_us_per_delivery"]
        if per_kind[a]["server_cpu_us_per_delivery"]
        else None,
        "per_kind": per_kind,
    }


def print_table(summary: dict[str, Any], clients: int, messages: int, size: int) -> None:
    print()
    print(
        f"fan-out: {clients} clients x {messages} broadcasts of {size}-byte pad "
        f"(medians of {next(iter(summary['per_kind'].values()))['runs']} runs)"
    )
    print(
        f"RATIO {summary['ratio_of']} (deliveries/s): {summary['ratio']:.2f}"
        f"   [paired per run: {', '.join(f'{x:.2f}' for x in summary['ratio_pairwise'])}]"
    )
    cpu_ratio = summary["cpu_ratio"]
    shown = "n/a (run too short)" if cpu_ratio is None else f"{cpu_ratio:.2f}"
    print(f"server CPU per delivery, inverse ratio: {shown}")
    header = (
        f"{'server':<14}{'deliveries/s':>14}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'CPU us/dlv':>12}{'srv CPU':>9}{'gen CPU':>9}{'other':>8}"
    )
    print(header)
    print("-" * len(header))
    for label, k in summary["per_kind"].items():
        flag = f"  ({k['incomplete_runs']} incomplete)" if k["incomplete_runs"] else ""
        flag += f"  ({k['noisy_runs']} noisy)" if k["noisy_runs"] else ""
        print(
            f"{label:<14}{k['deliveries_per_s']:>14,.0f}{k['latency_p50_us'] / 1e3:>9.2f}"
            f"{k['latency_p99_us'] / 1e3:>9.2f}{k['server_cpu_us_per_delivery']:>12.2f}"
            f"{k['server_cpu_fraction']:>9.2f}{k['loadgen_cpu_fraction']:>9.2f}"
            f"{k['other_busy_cores']:>8.2f}{flag}"
        )
    print("(srv/gen CPU: cores used by the server / load generator over the run's wall time;")
    print(" other: cores used by the rest of the machine meanwhile; noisy: other > --max-other)")


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def write_results(
    name: str,
    stamp: dt.datetime,
    params: dict[str, Any],
    payload: dict[str, Any],
    out: Path | None,
    *,
    packages: Sequence[str] = ("trio", "websockets", "trio_rt"),
    stamp_key: str = "started_utc",
) -> Path:
    """Write one benchmark's JSON document (machine notes included) and say where."""
    if out is None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"{name}-{stamp:%Y%m%dT%H%M%SZ}.json"
    document = {
        "benchmark": name.replace("-", "_"),
        stamp_key: stamp.isoformat(timespec="seconds"),
        "params": params,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            **{package: version(package) for package in packages},
            "loadavg": os.getloadavg(),
        },
        **payload,
    }
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results: {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=70, help="length of the 'pad' string")
    parser.add_argument(
        "--servers",
        default="trio_rt,baseline",
        help="comma-separated kinds (%(default)s): a name from SERVERS or a module path"
        " (taking --host/--port, printing READY <port>); the ratio is first/second; a kind"
        " may repeat",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--max-other",
        type=float,
        default=0.25,
        help="a run during which the rest of the machine used more cores than this is flagged"
        " noisy; before each run wait for it to be quieter than this (%(default)s)",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=30.0,
        help="wait at most this many seconds for a quiet machine before each run (%(default)s)",
    )
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    args = parser.parse_args(argv)

    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in SERVERS and "." not in k]
    if unknown:
        parser.error(f"unknown server kind(s) {unknown}; known: {sorted(SERVERS)}")
    labels = [k if kinds.count(k) == 1 else f"{k}#{i + 1}" for i, k in enumerate(kinds)]

    started = dt.datetime.now(dt.UTC)
    runs: list[dict[str, Any]] = []
    for run in range(args.runs):
        for kind, label in zip(kinds, labels, strict=True):
            result = one_run(
                kind,
                args.host,
                args.clients,
                args.messages,
                args.size,
                args.max_other,
                args.wait_idle,
            )
            result.update(label=label, run=run)
            runs.append(result)
            print(
                f"run {run + 1}/{args.runs} {label:<12} {result['deliveries_per_s']:>10,.0f} dlv/s"
                f"  p50 {result['latency_p50_us'] / 1e3:6.2f} ms"
                f"  p99 {result['latency_p99_us'] / 1e3:6.2f} ms"
                f"  server {result['server_cpu_us_per_delivery']:5.2f} us/dlv"
                f" ({result['server_cpu_fraction']:.2f} core)"
                f"  gen {result['loadgen_cpu_fraction']:.2f} core"
                f"  other {result['other_busy_cores']:.2f}"
                f"  {result['deliveries_per_read']:.2f} dlv/read"
                f"  drain {result['drain_ms']:.1f} ms"
                + ("" if result["completed"] else f"  INCOMPLETE {result['deliveries']}")
                + ("  NOISY" if result["noisy"] else ""),
                flush=True,
            )
            for error in result["errors"]:
                print(f"    error: {error}", file=sys.stderr)

    summary = summarize(runs, labels)
    print_table(summary, args.clients, args.messages, args.size)

    write_results(
        "fanout",
        started,
        {
            "clients": args.clients,
            "messages": args.messages,
            "size": args.size,
            "runs": args.runs,
            "servers": kinds,
        },
        {"summary": summary, "runs": runs},
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

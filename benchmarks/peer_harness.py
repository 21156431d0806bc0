"""Shared runner for the peer/latency/compress benchmarks: ``benchmarks.fanout``'s method with
configurable server and load-generator command lines.

A *kind* is a label, a server module with extra arguments and extra ``benchmarks.peer_loadgen``
arguments (``--protocol sio``, ``--deflate``, ``--rate R``). For each run, kinds alternate; each
run starts the server subprocess (it prints ``READY <port>``), then the generator (``JOINED``),
measures the server's CPU (psutil) and the machine's other load over the broadcast window,
exactly as ``benchmarks.fanout.one_run`` does, and the summary / ratios / table are
``benchmarks.fanout``'s (the first kind is the numerator of every ratio).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks import fanout
from benchmarks.fanout import LineReader, cpu_seconds, machine_busy_seconds, stop, wait_until_idle


@dataclass(frozen=True)
class Kind:
    label: str
    server: str  # module path
    server_args: tuple[str, ...] = ()
    loadgen_args: tuple[str, ...] = field(default_factory=tuple)


def one_run(
    kind: Kind, host: str, clients: int, messages: int, size: int, max_other: float, wait: float
) -> dict[str, Any]:
    idle_busy = wait_until_idle(max_other, wait) if wait > 0 else None
    py = sys.executable
    root = fanout.REPO_ROOT
    pythonpath = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}
    server = subprocess.Popen(
        [py, "-m", kind.server, "--host", host, "--port", "0", *kind.server_args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    loadgen: subprocess.Popen[str] | None = None
    try:
        assert server.stdout is not None
        port = int(
            LineReader(server.stdout, f"{kind.label} server").wait_for("READY", 60).split()[1]
        )
        server_ps = psutil.Process(server.pid)
        loadgen = subprocess.Popen(
            [
                py,
                "-m",
                "benchmarks.peer_loadgen",
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
                *kind.loadgen_args,
            ],
            cwd=root,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert loadgen.stdout is not None and loadgen.stdin is not None
        loadgen_out = LineReader(loadgen.stdout, "loadgen")
        loadgen_out.wait_for("JOINED", 120)
        time.sleep(0.5)  # let the join traffic settle
        server_cpu_before = cpu_seconds(server_ps)
        busy_before = machine_busy_seconds()
        wall_before = time.monotonic()
        loadgen.stdin.write("GO\n")
        loadgen.stdin.flush()
        line = loadgen_out.wait_for("RESULT", 600)
        wall = time.monotonic() - wall_before
        server_cpu = cpu_seconds(server_ps) - server_cpu_before
        busy = machine_busy_seconds() - busy_before
        result: dict[str, Any] = json.loads(line.split(" ", 1)[1])
        loadgen.wait(timeout=30)
    finally:
        if loadgen is not None:
            stop(loadgen)
        stop(server)
    deliveries = result["deliveries"]
    result.update(
        kind=kind.label,
        server_cpu_s=server_cpu,
        server_cpu_fraction=server_cpu / wall,
        server_cpu_us_per_delivery=server_cpu / deliveries * 1e6 if deliveries else None,
        machine_busy_cores=busy / wall,
        other_busy_cores=max(0.0, busy - server_cpu - result["loadgen_cpu_s"]) / wall,
        busy_cores_before=idle_busy,
    )
    result["noisy"] = result["other_busy_cores"] > max_other
    return result


def run_all(
    kinds: list[Kind],
    *,
    clients: int,
    messages: int,
    size: int,
    runs: int,
    host: str = "127.0.0.1",
    max_other: float = 0.25,
    wait_idle: float = 30.0,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Alternating runs of every kind; returns (runs, fanout.summarize(...)) and prints both."""
    results: list[dict[str, Any]] = []
    for run in range(runs):
        for kind in kinds:
            r = one_run(kind, host, clients, messages, size, max_other, wait_idle)
            r.update(label=kind.label, run=run)
            results.append(r)
            print(
                f"run {run + 1}/{runs} {kind.label:<16} {r['deliveries_per_s']:>10,.0f} dlv/s"
                f"  p50 {r['latency_p50_us'] / 1e3:7.2f} ms"
                f"  p99 {r['latency_p99_us'] / 1e3:7.2f} ms"
                f"  server {r['server_cpu_us_per_delivery'] or float('nan'):6.2f} us/dlv"
                f" ({r['server_cpu_fraction']:.2f} core)  gen {r['loadgen_cpu_fraction']:.2f}"
                f"  other {r['other_busy_cores']:.2f}"
                f"  {r['deliveries_per_read'] or float('nan'):.2f} dlv/read"
                f"  drain {r['drain_ms'] or float('nan'):.1f} ms"
                + ("" if r["completed"] else f"  INCOMPLETE {r['deliveries']}")
                + ("  NOISY" if r["noisy"] else ""),
                flush=True,
            )
            for error in r["errors"]:
                print(f"    error: {error}", file=sys.stderr)
    labels = [k.label for k in kinds]
    summary = fanout.summarize(results, labels)
    # every other kind against the first, too
    first = summary["per_kind"][labels[0]]
    summary["ratios_vs_first"] = {
        label: {
            "deliveries_per_s": first["deliveries_per_s"] / k["deliveries_per_s"],
            "cpu": k["server_cpu_us_per_delivery"] / first["server_cpu_us_per_delivery"],
        }
        for label, k in summary["per_kind"].items()
        if label != labels[0]
    }
    fanout.print_table(summary, clients, messages, size)
    for label, r in summary["ratios_vs_first"].items():
        print(
            f"RATIO {labels[0]}/{label}: deliveries/s {r['deliveries_per_s']:.2f},"
            f" server CPU per delivery (inverse) {r['cpu']:.2f}"
        )
    return results, summary


def write_json(
    name: str, params: dict[str, Any], payload: dict[str, Any], out: Path | None
) -> Path:
    return fanout.write_results(
        name,
        dt.datetime.now(dt.UTC),
        params,
        payload,
        out,
        packages=("trio", "websockets", "python-socketio", "aiohttp"),
        stamp_key="finished_utc",
    )

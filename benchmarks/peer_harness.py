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

import argparse
import datetime as dt
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import fanout


@dataclass(frozen=True)
class Kind:
    label: str
    server: str  # module path
    server_args: tuple[str, ...] = ()
    loadgen_args: tuple[str, ...] = field(default_factory=tuple)


def one_run(
    kind: Kind, host: str, clients: int, messages: int, size: int, max_other: float, wait: float
) -> dict[str, Any]:
    """`benchmarks.fanout.one_run` with this kind's server and `benchmarks.peer_loadgen`."""
    return fanout.one_run(
        kind.server,
        host,
        clients,
        messages,
        size,
        max_other,
        wait,
        server_args=kind.server_args,
        loadgen="benchmarks.peer_loadgen",
        loadgen_args=kind.loadgen_args,
        label=kind.label,
    )


def describe_run(r: dict[str, Any]) -> str:
    """One fan-out run's numbers on one line (the progress line of every peer benchmark)."""
    return (
        f"{r['deliveries_per_s']:>10,.0f} dlv/s"
        f"  p50 {r['latency_p50_us'] / 1e3:7.2f} ms"
        f"  p99 {r['latency_p99_us'] / 1e3:7.2f} ms"
        f"  server {r['server_cpu_us_per_delivery'] or float('nan'):6.2f} us/dlv"
        f" ({r['server_cpu_fraction']:.2f} core)  gen {r['loadgen_cpu_fraction']:.2f}"
        f"  other {r['other_busy_cores']:.2f}"
        f"  {r['deliveries_per_read'] or float('nan'):.2f} dlv/read"
        f"  drain {r['drain_ms'] or float('nan'):.1f} ms"
        f"  setup {r['setup_cpu_us_per_connection'] / 1e3:.2f} ms/conn"
        + ("" if r["completed"] else f"  INCOMPLETE {r['deliveries']}")
        + ("  NOISY" if r["noisy"] else "")
    )


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
            print(f"run {run + 1}/{runs} {kind.label:<16} {describe_run(r)}", flush=True)
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


@dataclass(frozen=True)
class Defaults:
    """A peer benchmark's defaults: clients, broadcasts per run, and the kinds (comma-separated)."""

    clients: int
    messages: int
    servers: str


def main(
    name: str, description: str, kinds: dict[str, Kind], defaults: Defaults, argv: list[str] | None
) -> int:
    """The command line of the peer benchmark ``name``: parses `argv`, runs `run_all` on the
    chosen kinds and writes the JSON (`write_json`); returns the exit status."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--messages", type=int, default=defaults.messages)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=70)
    parser.add_argument("--servers", default=defaults.servers)
    parser.add_argument("--max-other", type=float, default=0.25)
    parser.add_argument("--wait-idle", type=float, default=10.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    chosen = [kinds[k.strip()] for k in args.servers.split(",") if k.strip()]
    params = {k: v for k, v in vars(args).items() if k != "json"}
    # the other options are run_all's keywords, by the same names
    runs, summary = run_all(chosen, **{k: v for k, v in params.items() if k != "servers"})
    write_json(name, params, {"summary": summary, "runs": runs}, args.json)
    return 0

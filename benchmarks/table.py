"""One table: trio_rt against every peer, each measure in the same run (``nox -s bench``).

Servers (``--servers``, the first is the subject of every ratio):

* ``trio_rt``: ``servers/latency_trio_rt.py`` (fan-out) and ``servers/conn_trio_rt.py`` (idle);
* ``websockets``: websockets' asyncio server, ``broadcast()`` (``servers/latency_baseline.py``,
  ``servers/conn_baseline.py``);
* ``socketio``: python-socketio on aiohttp (``servers/peer_socketio.py``; its clients speak
  Engine.IO/Socket.IO);
* ``node_ws``: Node's ``ws``; ``go_gorilla``: Go's gorilla/websocket with one writer goroutine
  per connection (``benchmarks/peers/``, built into a cache before the first run: ``npm ci``
  and ``go build`` with the module proxy).

Each of ``--runs`` runs measures, for every server in turn (alternating, so the machine's
other load hits all of them):

1. **burst fan-out** (``benchmarks.fanout``'s run): ``--clients`` clients in one room,
   ``--messages`` broadcasts as fast as the server goes: deliveries/s and server CPU per
   delivery;
2. **paced**: the same clients, ``--rate`` broadcasts/s for ``--paced-seconds`` (absolute
   schedule): latency p50/p99 (server stamp to client receipt) and server CPU per delivery;
3. **connection setup**, from the same fan-out runs (1 and 2): the server's CPU from
   ``READY`` until every client has its ``welcome`` and ``room_joined`` (handshake, welcome,
   ``join_room``), per connection;
4. **idle memory** (``benchmarks.connections``'s ``memory`` phase): server RSS growth per
   connection with ``--connections`` idle connections, heartbeats on (20 s); for the subject
   also with permessage-deflate (``memory_deflate``). The server's CPU while they open
   (handshake + welcome, no join) is a second, steadier setup row: psutil's CPU clock ticks
   every 10 ms, 0.05 ms per connection at 200 clients, 0.002 ms at 5,000.

Then it prints ONE table: the ratios subject / peer first, then the medians, and the issue 15
targets met or not. Every run's numbers, the table and the machine notes go to
``benchmarks/results/table-<UTC time>.json`` (and the table alone to ``.txt``; gitignored).

Run: ``python -m benchmarks.table [--runs 3] [--servers trio_rt,websockets,socketio,node_ws,
go_gorilla] [--quick]``. ``--quick``: a smoke run (20 clients, 1 run, 100 idle connections,
no waiting for a quiet machine), numbers meaningless.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import connections, peer_harness
from benchmarks.fanout import median, write_results
from benchmarks.peer_harness import Kind
from benchmarks.peers import PEERS, BuildError, ExternalPeer, PeerUnavailable
from benchmarks.servers._conn_common import raise_fd_limit


@dataclass(frozen=True)
class Contender:
    """A server of the table: its fan-out kind and its ``benchmarks.connections`` kind."""

    label: str
    fanout: Kind
    conn: str  # a benchmarks.connections.SERVERS name
    peer: ExternalPeer | None = None  # built before the first run


def _kind(label: str, module: str, loadgen_args: tuple[str, ...] = ()) -> Kind:
    return Kind(label, f"benchmarks.servers.{module}", (), loadgen_args)


CONTENDERS = {
    c.label: c
    for c in (
        Contender("trio_rt", _kind("trio_rt", "latency_trio_rt"), "trio_rt"),
        Contender("websockets", _kind("websockets", "latency_baseline"), "baseline"),
        Contender(
            "socketio", _kind("socketio", "peer_socketio", ("--protocol", "sio")), "socketio"
        ),
        Contender("node_ws", _kind("node_ws", "node_ws"), "node_ws", PEERS["node_ws"]),
        Contender(
            "go_gorilla", _kind("go_gorilla", "go_gorilla"), "go_gorilla", PEERS["go_gorilla"]
        ),
    )
}

BEFORE = "trio_rt@before"


def before_contender(tree: Path) -> Contender:
    """trio_rt's benchmark servers run from `tree` (``benchmarks.servers.other_tree``)."""
    shim = "benchmarks.servers.other_tree"
    connections.SERVERS[BEFORE] = shim
    connections.SERVER_ARGS[BEFORE] = [
        "--tree",
        str(tree),
        "--module",
        connections.SERVERS["trio_rt"],
    ]
    fanout = Kind(
        BEFORE, shim, ("--tree", str(tree), "--module", "benchmarks.servers.latency_trio_rt")
    )
    return Contender(BEFORE, fanout, BEFORE)


# (option, full value, --quick value): the options --quick changes, unless given explicitly
SIZES: list[tuple[str, float, float]] = [
    ("runs", 3, 1),
    ("clients", 200, 20),
    ("messages", 2000, 200),
    ("rate", 200.0, 100.0),
    ("paced_seconds", 5.0, 1.0),
    ("connections", 5000, 100),
    ("idle", 3.0, 0.5),
    ("wait_idle", 10.0, 0.0),
]


@dataclass(frozen=True)
class Row:
    key: str  # in the summary's per-server dict
    label: str
    fmt: str
    higher_is_better: bool


ROWS = [
    Row("burst_deliveries_per_s", "burst: deliveries/s", "{:,.0f}", True),
    Row("burst_cpu_us", "burst: server CPU us/delivery", "{:.2f}", False),
    Row("paced_p50_ms", "paced: p50 latency ms", "{:.2f}", False),
    Row("paced_p99_ms", "paced: p99 latency ms", "{:.2f}", False),
    Row("paced_cpu_us", "paced: server CPU us/delivery", "{:.2f}", False),
    Row("setup_cpu_ms", "setup: server CPU ms/connection", "{:.3f}", False),
    Row("idle_open_cpu_ms", "setup, idle phase: CPU ms/conn", "{:.3f}", False),
    Row("idle_kib", "idle: KiB/connection", "{:.1f}", False),
    Row("idle_kib_deflate", "idle, deflate: KiB/connection", "{:.1f}", False),
]


@dataclass(frozen=True)
class Target:
    """An issue 15 target for trio_rt: its ratio to `peer` (or, without one, its absolute
    value) compared with `limit`."""

    peer: str | None
    at_least: bool
    limit: float

    def text(self) -> str:
        sign = ">=" if self.at_least else "<="
        return f"{sign} {self.limit:g}x {self.peer}" if self.peer else f"{sign} {self.limit:g}"

    def met(self, value: float) -> bool:
        return value >= self.limit if self.at_least else value <= self.limit


TARGETS = {
    "burst_deliveries_per_s": Target("websockets", True, 1.5),
    "burst_cpu_us": Target("go_gorilla", False, 1.1),
    "paced_cpu_us": Target("node_ws", False, 1.0),
    "setup_cpu_ms": Target("websockets", False, 1.2),
    "idle_kib": Target(None, False, 12.0),
}


def build_peers(chosen: list[Contender], log: Callable[[str], None]) -> dict[str, Any]:
    """Builds the external peers among `chosen` into the cache (a cache hit is instant);
    returns their versions. Raises `PeerUnavailable` or `BuildError`."""
    versions: dict[str, Any] = {}
    for c in chosen:
        if c.peer is not None:
            c.peer.build(log=log)
            versions[c.label] = c.peer.versions()
    return versions


def conn_args(args: argparse.Namespace) -> argparse.Namespace:
    """The ``benchmarks.connections`` options of the idle-memory phases."""
    return connections.arg_parser().parse_args(
        [
            *("--connections", str(args.connections), "--idle", str(args.idle)),
            *("--host", args.host, "--max-other", str(args.max_other)),
            *("--wait-idle", str(args.wait_idle)),
        ]
    )


def measure(chosen: list[Contender], args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """All runs (module docstring), printing one line per run; returns them by measure."""
    runs: dict[str, list[dict[str, Any]]] = {"burst": [], "paced": [], "memory": []}
    paced_messages = max(1, round(args.rate * args.paced_seconds))
    rate_args = ("--rate", f"{args.rate:g}")
    cargs = conn_args(args)
    subject = chosen[0]

    def fan_out(run: int, name: str, c: Contender, kind: Kind, messages: int) -> None:
        r = peer_harness.one_run(
            kind, args.host, args.clients, messages, args.size, args.max_other, args.wait_idle
        )
        r.update(label=c.label, run=run, measure=name)
        runs[name].append(r)
        print(
            f"run {run + 1}/{args.runs} {name:<8}{c.label:<11}{peer_harness.describe_run(r)}",
            flush=True,
        )
        for error in r["errors"]:
            print(f"    error: {error}", file=sys.stderr)

    def idle(run: int, c: Contender, phase: str) -> None:
        r = connections.one_phase(c.conn, phase, cargs)
        r.update(label=c.label, run=run, measure=phase)
        runs["memory"].append(r)
        shown = "idle" if phase == "memory" else "deflate"  # fits the 8-wide column
        noisy = "  NOISY" if r["noisy"] else ""
        print(
            f"run {run + 1}/{args.runs} {shown:<8}{c.label:<11}{connections.describe(r)}{noisy}",
            flush=True,
        )
        for error in r.get("errors", []):
            print(f"    error: {error}", file=sys.stderr)

    for run in range(args.runs):
        for c in chosen:
            fan_out(run, "burst", c, c.fanout, args.messages)
        for c in chosen:
            paced = Kind(
                c.label, c.fanout.server, c.fanout.server_args, (*c.fanout.loadgen_args, *rate_args)
            )
            fan_out(run, "paced", c, paced, paced_messages)
        for c in chosen:
            idle(run, c, "memory")
        idle(run, subject, "memory_deflate")
    return runs


def summarize(runs: dict[str, list[dict[str, Any]]], labels: list[str]) -> dict[str, Any]:
    """Medians per server (keys: `ROWS`' and a few more), the ratios subject / server per row,
    and the run counts that flag a doubtful median (incomplete, noisy, saturated)."""

    def med(measure: str, label: str, key: str, scale: float = 1.0) -> float:
        values = [r[key] for r in runs[measure] if r["label"] == label and r.get(key) is not None]
        return median(values) * scale

    def mem(label: str, phase: str, key: str) -> float:
        values = [r[key] for r in runs["memory"] if r["label"] == label and r["measure"] == phase]
        return median(values)

    per_server: dict[str, dict[str, float]] = {}
    flags: dict[str, dict[str, int]] = {}
    others: list[float] = []
    for label in labels:
        fan = [r for m in ("burst", "paced") for r in runs[m] if r["label"] == label]
        paced = [r for r in runs["paced"] if r["label"] == label]
        per_server[label] = {
            "burst_deliveries_per_s": med("burst", label, "deliveries_per_s"),
            "burst_cpu_us": med("burst", label, "server_cpu_us_per_delivery"),
            "burst_p50_ms": med("burst", label, "latency_p50_us", 1e-3),
            "burst_p99_ms": med("burst", label, "latency_p99_us", 1e-3),
            "paced_p50_ms": med("paced", label, "latency_p50_us", 1e-3),
            "paced_p99_ms": med("paced", label, "latency_p99_us", 1e-3),
            "paced_cpu_us": med("paced", label, "server_cpu_us_per_delivery"),
            "paced_deliveries_per_s": med("paced", label, "deliveries_per_s"),
            "setup_cpu_ms": median([r["setup_cpu_us_per_connection"] / 1e3 for r in fan]),
            "idle_kib": mem(label, "memory", "kib_per_conn"),
            "idle_kib_deflate": mem(label, "memory_deflate", "kib_per_conn"),
            "idle_open_cpu_ms": mem(label, "memory", "server_cpu_us_per_open") / 1e3,
        }
        offered = [r["clients"] * float(r["rate"] or 0) for r in paced]
        others += [r["other_busy_cores"] for r in fan if "other_busy_cores" in r]
        flags[label] = {
            "fan_out_runs": len(fan),
            "incomplete": sum(1 for r in fan if not r["completed"]),
            # the rest of the machine used more than --max-other cores meanwhile
            "noisy": sum(1 for r in fan if r["noisy"]),
            "paced_runs": len(paced),
            # the paced load was more than the server could deliver: its latency is queueing
            "saturated": sum(
                1 for r, o in zip(paced, offered, strict=True) if r["deliveries_per_s"] < 0.9 * o
            ),
        }
    subject = labels[0]
    ratios = {
        row.key: {
            label: per_server[subject][row.key] / per_server[label][row.key]
            for label in labels[1:]
            if per_server[label][row.key] == per_server[label][row.key]  # not NaN
            and per_server[label][row.key]
        }
        for row in ROWS
    }
    targets: dict[str, dict[str, Any]] = {}
    if subject == "trio_rt":
        for key, target in TARGETS.items():
            value = (
                per_server[subject][key] if target.peer is None else ratios[key].get(target.peer)
            )
            if value is not None:
                targets[key] = {"target": target.text(), "value": value, "met": target.met(value)}
    return {
        "subject": subject,
        "per_server": per_server,
        "ratios": ratios,
        "targets": targets,
        "flags": flags,
        # cores used by the rest of the machine during the fan-out runs (median)
        "other_busy_cores": median(others),
    }


def render(summary: dict[str, Any], args: argparse.Namespace, labels: list[str]) -> str:
    """The table (ratios first, then absolutes, then the targets) with its notes."""
    subject = summary["subject"]
    peers = labels[1:]
    width = [max(10, len(label) + 1) for label in labels]
    lines = [
        f"{subject} against every peer in the same run, medians of {args.runs} run(s):"
        f" fan-out {args.clients} clients, burst {args.messages:,} broadcasts,",
        f"paced {args.rate:g} broadcasts/s for {args.paced_seconds:g} s; idle"
        f" {args.connections:,} connections, heartbeat 20 s",
    ]
    ratio_head = "".join(f"{p:>{w}}" for p, w in zip(peers, width[1:], strict=True))
    abs_head = "".join(f"{label:>{w}}" for label, w in zip(labels, width, strict=True))
    ratio_title = f" ratio {subject} / peer"
    rw = max(len(ratio_title), len(ratio_head))  # the ratio block's width
    head = f"{'measure':<32}{'good':>5} |{ratio_head:<{rw}} |{abs_head} |  target (issue 15)"
    lines += [
        "",
        f"{'':<37} |{ratio_title:<{rw}} |{' median':<{len(abs_head)}} |",
        head,
        "-" * len(head),
    ]
    for row in ROWS:
        ratios = summary["ratios"][row.key]
        cells = "".join(
            f"{ratios[p]:>{w}.2f}" if p in ratios else f"{'-':>{w}}"
            for p, w in zip(peers, width[1:], strict=True)
        )
        values = summary["per_server"]
        absolutes = "".join(
            f"{row.fmt.format(values[label][row.key]):>{w}}"
            if values[label][row.key] == values[label][row.key]
            else f"{'-':>{w}}"
            for label, w in zip(labels, width, strict=True)
        )
        target = summary["targets"].get(row.key)
        verdict = f"  {target['target']}: {'met' if target['met'] else 'NOT met'}" if target else ""
        good = ">1" if row.higher_is_better else "<1"
        lines.append(f"{row.label:<32}{good:>5} |{cells:<{rw}} |{absolutes} |{verdict}")
    lines.append("-" * len(head))
    lines += [
        "good: the side of 1 where the ratio favours the subject. burst: as fast as the server"
        " goes; paced: latency is",
        " server stamp -> client receipt; setup: server CPU from READY until every client has its"
        " welcome and room_joined;",
        " setup, idle phase: server CPU per connection while the idle ones open (handshake +"
        " welcome, no join);",
        " idle: server RSS growth per idle connection (deflate: permessage-deflate negotiated,"
        f" {subject} only).",
        f" noisy: the rest of the machine used > {args.max_other:g} core during the run (median"
        f" over the fan-out runs: {summary['other_busy_cores']:.2f} core);",
        " saturated: a paced run delivered < 90 % of the offered load (its latency is queueing).",
    ]
    for label, f in summary["flags"].items():
        notes = [
            f"{f[what]}/{f[total]} {name}"
            for what, total, name in (
                ("noisy", "fan_out_runs", "fan-out runs noisy"),
                ("incomplete", "fan_out_runs", "fan-out runs incomplete"),
                ("saturated", "paced_runs", "paced runs saturated"),
            )
            if f[what]
        ]
        if notes:
            lines.append(f" {label}: " + ", ".join(notes))
    return "\n".join(lines)


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--servers",
        default=",".join(CONTENDERS),
        help="comma-separated, the first is the subject of the ratios (%(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes, 1 run")
    parser.add_argument("--runs", type=int, help="runs of every measure; medians (3)")
    parser.add_argument("--clients", type=int, help="clients of the fan-out runs (200)")
    parser.add_argument("--messages", type=int, help="broadcasts per burst run (2000)")
    parser.add_argument("--rate", type=float, help="paced broadcasts/s (200)")
    parser.add_argument("--paced-seconds", type=float, help="length of a paced run (5)")
    parser.add_argument("--connections", type=int, help="idle connections (5000)")
    parser.add_argument("--idle", type=float, help="idle seconds before the RSS reading (3)")
    parser.add_argument("--size", type=int, default=70, help="'pad' length (%(default)s)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--max-other",
        type=float,
        default=0.25,
        help="a run during which the rest of the machine used more cores is noisy (%(default)s)",
    )
    parser.add_argument(
        "--wait-idle", type=float, help="seconds to wait for a quiet machine before a run (10)"
    )
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        metavar="TREE",
        help="another checkout of trio_rt (e.g. a git worktree of the commit before a change): "
        "adds the contender 'trio_rt@before', run from there in the same runs",
    )
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    return parser


def parse_args(
    argv: list[str] | None, parser: argparse.ArgumentParser | None = None
) -> argparse.Namespace:
    """The command line, with the sizes not given set to the full or the ``--quick`` ones."""
    args = (parser or arg_parser()).parse_args(argv)
    for name, full, quick in SIZES:
        if getattr(args, name) is None:
            setattr(args, name, type(full)(quick if args.quick else full))
    return args


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser()
    args = parse_args(argv, parser)
    labels = [s.strip() for s in args.servers.split(",") if s.strip()]
    if args.before is not None:
        if not (args.before / "trio_rt" / "__init__.py").is_file():
            parser.error(f"--before {args.before}: not a checkout of trio_rt")
        CONTENDERS[BEFORE] = before_contender(args.before.resolve())
        if BEFORE not in labels:
            labels.insert(1 if labels else 0, BEFORE)
    unknown = [label for label in labels if label not in CONTENDERS]
    if unknown or len(set(labels)) != len(labels) or not labels:
        parser.error(f"--servers: each at most once, among {', '.join(CONTENDERS)}")
    chosen = [CONTENDERS[label] for label in labels]
    raise_fd_limit()
    try:
        versions = build_peers(chosen, log=lambda text: print(text, flush=True))
    except (PeerUnavailable, BuildError) as exc:
        print(f"benchmarks.table: {exc}\n(leave that peer out with --servers)", file=sys.stderr)
        return 2

    started = dt.datetime.now(dt.UTC)
    command = shlex.join(
        ["python", "-m", "benchmarks.table", *(sys.argv[1:] if argv is None else argv)]
    )
    runs = measure(chosen, args)
    summary = summarize(runs, labels)
    table = render(summary, args, labels)
    print()
    print(table)
    params = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "json"}
    out = write_results(
        "table",
        started,
        params,
        {"command": command, "peers": versions, "summary": summary, "table": table, "runs": runs},
        args.json,
        packages=("trio", "websockets", "python-socketio", "aiohttp", "trio_rt"),
    )
    out.with_suffix(".txt").write_text(f"{command}\n{started:%Y-%m-%d %H:%M} UTC\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

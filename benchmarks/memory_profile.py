"""Where the bytes of an idle connection go: a tracemalloc snapshot diff at N connections.

Starts a connection-benchmark server (``benchmarks/servers/conn_*.py``) under
``benchmarks.mem_probe`` (tracemalloc, 25 frames), snapshots it, opens N idle connections
with the load generator of ``benchmarks.connections`` (each reads its welcome), waits, and
snapshots again. Prints

* the growth per connection (tracemalloc: Python allocations only, no RSS overhead);
* the growth grouped by the innermost frame in trio_rt, then websockets, then trio, then
  anything else ("who asked for it"), per connection;
* the top tracebacks (bytes per connection, allocations per connection);
* the gc-tracked objects per connection by type (what the cyclic GC has to traverse).

Run: ``python -m benchmarks.memory_profile [--connections 2000] [--server trio_rt]
[--heartbeat 20] [--compression] [--top 25]``. tracemalloc slows the server; memory only.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from benchmarks.connections import SERVERS, server_state, start_loadgen
from benchmarks.fanout import stop
from benchmarks.proc import Proc
from benchmarks.servers._conn_common import raise_fd_limit

OWNERS = (
    ("trio_rt", "/trio_rt/"),
    ("websockets", "/websockets/"),
    ("trio", "/trio/"),
    ("outcome", "/outcome/"),
)


def owner_frame(tb: tracemalloc.Traceback) -> str:
    """The innermost frame of the first owner (trio_rt, websockets, trio...) in the traceback."""
    frames = list(reversed(tb))  # most recent call first (tracemalloc keeps oldest first)
    for name, marker in OWNERS:
        for f in frames:
            if marker in f.filename:
                short = f.filename.split(marker, 1)[1]
                return f"{name}: {short}:{f.lineno}"
    f = frames[0]
    return f"other: {f.filename.rsplit('/', 1)[-1]}:{f.lineno}"


def short_trace(tb: tracemalloc.Traceback, depth: int = 6) -> str:
    out = []
    for f in list(reversed(tb))[:depth]:
        name = f.filename
        for _owner, marker in OWNERS:
            if marker in name:
                name = marker.strip("/") + "/" + name.split(marker, 1)[1]
                break
        else:
            name = name.rsplit("/", 1)[-1]
        out.append(f"{name}:{f.lineno}")
    return " <- ".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--server", default="trio_rt")
    parser.add_argument("--heartbeat", type=float, default=20.0)
    parser.add_argument("--compression", action="store_true")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--idle", type=float, default=3.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    raise_fd_limit()

    outdir = Path(tempfile.mkdtemp(prefix="trio_rt-mem-"))
    module = SERVERS.get(args.server, args.server)
    server_args = ["-m", "benchmarks.mem_probe", str(outdir), module, "--host", args.host]
    server_args += ["--port", "0", "--heartbeat", str(args.heartbeat)]
    server_args += ["--compression"] if args.compression else []
    server = Proc(server_args, "server")
    gen = None
    n = args.connections
    try:
        gen = start_loadgen(server, args.host)
        server_state(server)
        import signal

        server.popen.send_signal(signal.SIGUSR2)
        server.out.wait_for("SNAPSHOT", 120)
        opened = gen.ask(f"OPEN {n} {args.batch} {int(args.compression)}", "OPENED", 600)
        if opened["failed"]:
            print(f"warning: {opened['failed']} connections failed", file=sys.stderr)
        n = opened["ok"]
        time.sleep(args.idle)
        server.popen.send_signal(signal.SIGUSR2)
        server.out.wait_for("SNAPSHOT", 300)
    finally:
        if gen is not None:
            stop(gen.popen)
        stop(server.popen)

    before = tracemalloc.Snapshot.load(str(outdir / "snap-0.tracemalloc"))
    after = tracemalloc.Snapshot.load(str(outdir / "snap-1.tracemalloc"))
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<*")]
    before, after = before.filter_traces(ignore), after.filter_traces(ignore)
    diff = after.compare_to(before, "traceback")
    total = sum(d.size_diff for d in diff)
    print(
        f"\n{args.server}: {n} idle connections, heartbeat {args.heartbeat} s, "
        f"compression {'on' if args.compression else 'off'}"
    )
    print(
        f"tracemalloc growth: {total / n / 1024:.2f} KiB per connection "
        f"({sum(d.count_diff for d in diff) / n:.1f} blocks per connection)"
    )

    by_owner: collections.Counter[str] = collections.Counter()
    count_owner: collections.Counter[str] = collections.Counter()
    for d in diff:
        key = owner_frame(d.traceback)
        by_owner[key] += d.size_diff
        count_owner[key] += d.count_diff
    print(f"\n{'B/conn':>8} {'blk/conn':>8}  allocated at (innermost trio_rt > websockets > trio)")
    for key, size in by_owner.most_common(args.top):
        if size / n < 8:
            break
        print(f"{size / n:8.0f} {count_owner[key] / n:8.2f}  {key}")

    print(f"\n{'B/conn':>8} {'blk/conn':>8}  top tracebacks (innermost first)")
    for d in sorted(diff, key=lambda d: -d.size_diff)[: args.top]:
        print(f"{d.size_diff / n:8.0f} {d.count_diff / n:8.2f}  {short_trace(d.traceback)}")

    t0 = collections.Counter(json.loads((outdir / "types-0.json").read_text()))
    t1 = collections.Counter(json.loads((outdir / "types-1.json").read_text()))
    t1.subtract(t0)
    objs = sum(t1.values())
    print(f"\ngc-tracked objects: {objs / n:.1f} per connection; by type (per connection):")
    for name, c in t1.most_common(args.top):
        if c / n < 0.5:
            break
        print(f"{c / n:8.2f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

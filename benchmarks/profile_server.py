"""Profile one fan-out server during a benchmark run: where does its CPU go?

``python -m benchmarks.profile_server trio_rt [--clients 200] [--messages 3000] [--native]
[--pace R]``

Starts the server under ``benchmarks.gc_probe`` (cyclic-GC accounting), the load generator,
and ``py-spy record`` attached to the server for the broadcast window only. Prints:

* the run's numbers (the sampler slows the server: compare shares, not absolutes);
* cyclic-GC collections and their share of the server's CPU in the window (measured by
  ``gc.callbacks``, independent of the sampler);
* the samples grouped into categories (the rules below name trio_rt internals: update them
  when those change), then the top functions by self and by inclusive samples.

``--pace R``: the table's paced row (R broadcasts/s) instead of a burst.
``--native`` (py-spy's native unwinding) also shows C frames, e.g. ``gc_collect_main`` and
the libc ``send``; it stops the process for each sample, so keep ``--rate`` low.
Needs py-spy (``pip install py-spy``) and the right to ptrace the server (root, or
``kernel.yama.ptrace_scope=0``). The raw samples are kept in ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from benchmarks.fanout import REPO_ROOT, RESULTS_DIR, SERVERS, LineReader, cpu_seconds, stop
from benchmarks.proc import Proc

Rule = Callable[[list[str], str], bool]


def _trio_send_line() -> str:
    """The frame (as py-spy names it) where trio's socket wrapper calls ``socket.send``."""
    try:
        import trio._socket as trio_socket

        lines, first = inspect.getsourcelines(trio_socket._SocketType._nonblocking_helper)
    except (ImportError, AttributeError, OSError):
        return "<unknown>"
    for offset, text in enumerate(lines):
        if "return fn(self._sock" in text:
            return f"_SocketType._nonblocking_helper (trio/_socket.py:{first + offset})"
    return "<unknown>"


def _direct_stream_line(method: str, needle: str) -> str:
    """The frame (as py-spy names it) of the line of ``DirectStream.<method>`` holding
    `needle`: where trio_rt hands bytes to the kernel."""
    from trio_rt._transport.direct_stream import DirectStream

    lines, first = inspect.getsourcelines(getattr(DirectStream, method))
    for offset, text in enumerate(lines):
        if needle in text:
            return f"DirectStream.{method} (trio_rt/_transport/direct_stream.py:{first + offset})"
    return "<unknown>"


TRIO_SEND = _trio_send_line()
DIRECT_WRITE = _direct_stream_line("send_now", "os.write(")
# A quiet fan-out's send_frame calls socket.send.
FRAME_WRITE = _direct_stream_line("send_frame", "._raw.send(")


def _any(*needles: str) -> Rule:
    return lambda stack, leaf: any(n in frame for frame in stack for n in needles)


# First match wins; a stack is a list of "function (file:line)" frames, root first.
CATEGORIES: list[tuple[str, Rule]] = [
    ("cyclic GC (gc_collect_main; --native only)", _any("gc_collect_main")),
    (
        "socket send()/write() syscall (kernel TCP over loopback)",
        lambda stack, leaf: (
            leaf.startswith(("send (libc", "write (libc", "__libc_send"))
            or leaf in (TRIO_SEND, DIRECT_WRITE, FRAME_WRITE)
        ),
    ),
    ("flush: FlushQueue pass over corked connections (join, checks)", _any("FlushQueue")),
    ("epoll (waiting for I/O)", lambda stack, leaf: "epoll" in leaf or "get_events" in leaf),
    ("writer: send_lock acquire/release (trio.Lock)", _any("trio/_sync.py")),
    ("writer: SocketStream.send_all, trio socket wrappers, checkpoints", _any("send_all")),
    ("writer: own loop (park/wake, take_all, join frames)", _any("Connection._writer")),
    ("broadcast: per-recipient checks, cork or queue (send_encoded)", _any("send_encoded")),
    (
        "websockets: broadcast(), framing, asyncio transport write (baseline)",
        _any("(websockets/asyncio/connection.py", "(websockets/frames.py", "(asyncio/selector"),
    ),
    (
        "broadcast: serialize, envelope, broker, recipients",
        _any("_publish", "broadcast_to_room", "run_bench"),
    ),
    ("reader / handshake", _any("recv", "_reader", "handshake")),
    ("event loop (trio run loop, reschedule; asyncio loop)", _any("unrolled_run", "_run_once")),
]

_PREFIXES = re.compile(r" \((?:[^()]*?/site-packages/|[^()]*?/lib/python3\.\d+/|[^()]*?/main/)")


def load_stacks(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        frames = [_PREFIXES.sub(" (", f) for f in stack.split(";")]
        stacks.append((frames, int(count)))
    return stacks


def _leaf(frames: list[str]) -> str:
    # In --native mode, skip the interpreter's own C frames (but keep the GC's).
    for frame in reversed(frames):
        if "(libpython" not in frame or "gc_collect" in frame:
            return frame
    return frames[-1]


def report(stacks: list[tuple[list[str], int]], top: int) -> None:
    total = sum(n for _, n in stacks) or 1
    categories: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        leaf = _leaf(frames)
        own[leaf or "<empty frame>"] += n
        for frame in set(frames):
            inclusive[frame] += n
        for name, rule in CATEGORIES:
            if rule(frames, leaf):
                categories[name] += n
                break
        else:
            categories["other"] += n
    print(f"\n{total} samples, by category:")
    for name, n in categories.most_common():
        print(f"  {100 * n / total:5.1f}%  {name}")
    print(f"\ntop {top} by self samples:")
    for name, n in own.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {name}")
    print(f"\ntop {top} by inclusive samples:")
    for name, n in inclusive.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", help=f"one of {sorted(SERVERS)} or a module path")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--size", type=int, default=70)
    parser.add_argument(
        "--rate", type=int, default=200, help="py-spy samples/s (%(default)s); 0: no sampler"
    )
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames)")
    parser.add_argument(
        "--nonblocking",
        action="store_true",
        help="py-spy --nonblocking: less slowdown, but torn stacks (not with --native)",
    )
    parser.add_argument(
        "--pace",
        type=float,
        default=0.0,
        help="broadcasts/s (the table's paced row: 200); 0: a burst (%(default)s)",
    )
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)

    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if args.rate > 0 and not Path(pyspy).exists():
        parser.error("py-spy not found: pip install py-spy (or --rate 0: GC accounting only)")
    module = SERVERS.get(args.kind, args.kind)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    raw = RESULTS_DIR / f"profile-{args.kind}-{time.strftime('%Y%m%dT%H%M%S')}.txt"

    py = sys.executable
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}
    server = subprocess.Popen(
        [py, "-m", "benchmarks.gc_probe", module, "--host", args.host, "--port", "0"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    loadgen: Proc | None = None
    sampler: subprocess.Popen[bytes] | None = None
    try:
        assert server.stdout is not None
        server_out = LineReader(server.stdout, "server")
        port = int(server_out.wait_for("READY", 60).split()[1])
        generator = "benchmarks.peer_loadgen" if args.pace > 0 else "benchmarks.loadgen"
        loadgen = Proc(
            [
                *("-m", generator, "--host", args.host, "--port", str(port)),
                *("--clients", str(args.clients), "--messages", str(args.messages)),
                *("--size", str(args.size)),
                *(("--rate", f"{args.pace:g}") if args.pace > 0 else ()),
            ],
            "loadgen",
        )
        loadgen.out.wait_for("JOINED", 120)

        if args.rate > 0:
            command = [pyspy, "record", "-p", str(server.pid), "-r", str(args.rate), "-f", "raw"]
            command += ["-o", str(raw)]
            command += ["--native"] if args.native else []
            command += ["--nonblocking"] if args.nonblocking else []
            sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)  # let py-spy attach

        server_ps = psutil.Process(server.pid)
        server.send_signal(signal.SIGUSR1)  # reset the GC counters
        time.sleep(0.1)
        cpu_before = cpu_seconds(server_ps)
        result = loadgen.ask("GO", "RESULT", 600)
        server_cpu = cpu_seconds(server_ps) - cpu_before
        server.send_signal(signal.SIGUSR2)
        gc_stats = json.loads(server_out.wait_for("GCSTATS", 30).split(" ", 1)[1])
        if sampler is not None:
            sampler.send_signal(signal.SIGINT)
            sampler.wait(timeout=60)
    finally:
        if sampler is not None and sampler.poll() is None:
            sampler.kill()
        if loadgen is not None:
            stop(loadgen.popen)
        stop(server)

    deliveries = result["deliveries"]
    sampling = f"py-spy ({'native, ' if args.native else ''}{args.rate}/s)" if sampler else "none"
    print(
        f"{args.kind}, sampler: {sampling}: "
        f"{result['deliveries_per_s']:,.0f} deliveries/s, server "
        f"{server_cpu / max(deliveries, 1) * 1e6:.2f} us CPU/delivery"
        + (" (the sampler slows it: compare shares, not these absolutes)" if sampler else "")
    )
    gc_seconds = sum(v[1] for v in gc_stats.values())
    print(
        f"cyclic GC during the broadcasts: {gc_seconds:.3f} s = "
        + (f"{100 * gc_seconds / server_cpu:.1f}%" if server_cpu > 0 else "n/a (no measurable CPU)")
        + " of the server's CPU "
        + ", ".join(f"gen{g}: {int(v[0])} x, {v[1]:.3f} s" for g, v in gc_stats.items())
    )
    if sampler is not None:
        report(load_stacks(raw), args.top)
        print(f"\nraw samples: {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

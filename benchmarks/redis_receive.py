"""The Redis receive path alone: a RedisBroker's CPU per message, from its socket to `deliver`.

A receiver process runs a ``RedisBroker`` subscribed to one channel with a `deliver` that only
counts; this harness publishes ``--messages`` messages into that channel as another server
would (pipelined, in bursts of ``--burst``, or paced at ``--rate`` per second) and measures the
receiver's CPU time (``/proc/<pid>/task/*/schedstat``, ns resolution) from the first publish
to the last delivery. No WebSocket, no manager: the part of a receiving server's work that
happens before its fan-out (the manager's envelope handling comes on top).

``--compare DIR`` runs the receiver with the code in DIR too (a tree of another commit),
alternating run by run. Run: ``python -m benchmarks.redis_receive --messages 20000 --runs 3
[--compare /tmp/main-tree]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from benchmarks.fanout import REPO_ROOT, LineReader, stop

CHANNEL = "bench:redis_receive"


# -- the receiver (run as `python -m benchmarks.redis_receive receiver URL N`) -----------------
async def receiver(url: str, count: int) -> None:
    from trio_rt.redis import RedisBroker

    got = 0
    done = trio.Event()

    def deliver(channel: str, data: bytes) -> None:
        nonlocal got
        got += 1
        if got >= count:
            done.set()

    broker = RedisBroker(url)
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.run, deliver)
        await broker.subscribe(CHANNEL)
        print("READY", flush=True)
        await done.wait()
        print("DONE", flush=True)
        nursery.cancel_scope.cancel()


def receiver_main(url: str, count: int) -> None:
    from trio_rt.redis import RedisBroker

    if getattr(RedisBroker, "needs_asyncio", False):  # a tree whose broker runs on redis-py
        import trio_asyncio

        trio.run(_in_loop, trio_asyncio, url, count)
    else:
        trio.run(receiver, url, count)


async def _in_loop(trio_asyncio: Any, url: str, count: int) -> None:
    async with trio_asyncio.open_loop():
        await receiver(url, count)


# -- the harness -------------------------------------------------------------------------------
def cpu_ns(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with open(task / "schedstat") as f:
            total += int(f.read().split()[0])
    return total


async def publish(url: str, messages: int, burst: int, rate: float, size: int) -> None:
    from trio_rt.redis._client import RedisClient

    payload = b"another-node\x00" + b'{"type":"bench","pad":"' + b"x" * size + b'"}'
    async with RedisClient(url) as client:
        t0 = trio.current_time()
        sent = 0
        while sent < messages:
            n = min(burst, messages - sent)
            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(client.execute, "PUBLISH", CHANNEL, payload)
            sent += n
            if rate > 0:
                await trio.sleep_until(t0 + sent / rate)


def one_run(code: str, tree: Path, url: str, args: argparse.Namespace) -> dict[str, Any]:
    pythonpath = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        # this file (DIR may not have it), with DIR's trio_rt on the path
        [sys.executable, __file__, "receiver", url, str(args.messages)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": pythonpath},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        out = LineReader(proc.stdout, "receiver")
        out.wait_for("READY", 60)
        time.sleep(0.3)
        load = os.getloadavg()[0]
        before = cpu_ns(proc.pid)
        wall = time.monotonic()
        trio.run(publish, url, args.messages, args.burst, args.rate, args.size)
        out.wait_for("DONE", 300)
        wall = time.monotonic() - wall
        cpu = cpu_ns(proc.pid) - before
    finally:
        stop(proc)
    return {
        "code": code,
        "us_per_message": cpu / args.messages / 1e3,
        "wall_s": wall,
        "load_average": load,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["receiver"]:
        receiver_main(argv[1], int(argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--burst", type=int, default=500, help="publishes pipelined at once")
    parser.add_argument("--rate", type=float, default=0.0, help="messages/s (0: bursts)")
    parser.add_argument("--size", type=int, default=70)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compare", type=Path, default=None)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args(argv)
    codes = [("this tree", REPO_ROOT)]
    if args.compare is not None:
        codes.append(("compared", args.compare.resolve()))

    from trio_rt.testing.services import RedisServer

    redis = RedisServer.start() if args.redis_url is None else None
    url = redis.url if redis is not None else args.redis_url
    results: list[dict[str, Any]] = []
    try:
        for run in range(args.runs):
            for code, tree in codes if run % 2 == 0 else codes[::-1]:
                result = one_run(code, tree, url, args)
                results.append(result)
                print(
                    f"run {run + 1}/{args.runs} {code:<10} {result['us_per_message']:7.2f} us/msg"
                    f"  wall {result['wall_s']:.2f} s  load {result['load_average']:.1f}",
                    flush=True,
                )
    finally:
        if redis is not None:
            redis.stop()
    mode = f"paced {args.rate:g}/s" if args.rate else f"bursts of {args.burst}"
    print(f"\nreceiver CPU per message, {args.messages} messages, {mode} (median of {args.runs}):")
    for code, _ in codes:
        mine = [r["us_per_message"] for r in results if r["code"] == code]
        each = ", ".join(f"{v:.2f}" for v in mine)
        print(f"  {code:<10} {statistics.median(mine):7.2f} us  (runs: {each})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

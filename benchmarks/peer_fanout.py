"""Fan-out against python-socketio: trio_rt, websockets' ``broadcast()`` and python-socketio.

One room of N clients (default 1,000), M broadcasts, kinds alternating run by run, as in
``benchmarks.fanout`` (same measurements; ``benchmarks.peer_harness`` runs it):

* ``trio_rt``: ``benchmarks.servers.trio_rt_server`` (compression and heartbeat off);
* ``baseline``: ``benchmarks.servers.baseline_websockets`` (websockets asyncio ``broadcast()``);
* ``socketio``: ``benchmarks.servers.peer_socketio`` (python-socketio ``AsyncServer`` on
  aiohttp, ``await sio.emit("bench", data, room="bench")`` per broadcast); its clients speak
  Engine.IO 4 / Socket.IO 5 over WebSocket (``benchmarks.peer_loadgen --protocol sio``).

Run: ``python -m benchmarks.peer_fanout --clients 1000 --messages 400 --runs 3
[--servers trio_rt,baseline,socketio] [--json out.json]``. Needs ``python-socketio`` and
``aiohttp``. The first kind is the numerator of every ratio.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.peer_harness import Kind, run_all, write_json

KINDS = {
    "trio_rt": Kind("trio_rt", "benchmarks.servers.trio_rt_server"),
    "baseline": Kind("baseline", "benchmarks.servers.baseline_websockets"),
    "socketio": Kind("socketio", "benchmarks.servers.peer_socketio", (), ("--protocol", "sio")),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=70)
    parser.add_argument("--servers", default="trio_rt,baseline,socketio")
    parser.add_argument("--max-other", type=float, default=0.25)
    parser.add_argument("--wait-idle", type=float, default=10.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    kinds = [KINDS[k.strip()] for k in args.servers.split(",") if k.strip()]
    runs, summary = run_all(
        kinds,
        clients=args.clients,
        messages=args.messages,
        size=args.size,
        runs=args.runs,
        max_other=args.max_other,
        wait_idle=args.wait_idle,
    )
    params = {k: v for k, v in vars(args).items() if k != "json"}
    write_json("peer_fanout", params, {"summary": summary, "runs": runs}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fan-out against python-socketio: trio_rt, websockets' ``broadcast()`` and python-socketio.

One room of N clients (default 1,000), M broadcasts, kinds alternating run by run, as in
``benchmarks.fanout`` (same measurements; ``benchmarks.peer_harness`` runs it):

* ``trio_rt``: ``benchmarks.servers.trio_rt_server`` (compression and heartbeat off);
* ``baseline``: ``benchmarks.servers.baseline_websockets`` (websockets asyncio ``broadcast()``);
* ``socketio``: ``benchmarks.servers.peer_socketio`` (python-socketio ``AsyncServer`` on
  aiohttp, ``await sio.emit("bench", data, room="bench")`` per broadcast); its clients speak
  Engine.IO 4 / Socket.IO 5 over WebSocket (``benchmarks.peer_loadgen --protocol sio``);
* ``node_ws``, ``go_gorilla``: Node's ``ws`` and Go's gorilla/websocket (``benchmarks.peers``,
  built into a cache by their launchers; not in the default ``--servers``).

Run: ``python -m benchmarks.peer_fanout --clients 1000 --messages 400 --runs 3
[--servers trio_rt,baseline,socketio] [--json out.json]``. Needs ``python-socketio`` and
``aiohttp``. The first kind is the numerator of every ratio.
"""

from __future__ import annotations

import sys

from benchmarks import peer_harness
from benchmarks.peer_harness import Defaults, Kind

DEFAULTS = Defaults(clients=1000, messages=400, servers="trio_rt,baseline,socketio")
KINDS = {
    "trio_rt": Kind("trio_rt", "benchmarks.servers.trio_rt_server"),
    "baseline": Kind("baseline", "benchmarks.servers.baseline_websockets"),
    "socketio": Kind("socketio", "benchmarks.servers.peer_socketio", (), ("--protocol", "sio")),
    "node_ws": Kind("node_ws", "benchmarks.servers.node_ws"),
    "go_gorilla": Kind("go_gorilla", "benchmarks.servers.go_gorilla"),
}


def main(argv: list[str] | None = None) -> int:
    return peer_harness.main("peer_fanout", __doc__.splitlines()[0], KINDS, DEFAULTS, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Peer fan-out and connection server: Node's ``ws`` (``benchmarks/peers/node_ws/server.js``).

Builds the peer into the cache if needed (``npm ci``, ``benchmarks.peers``), then replaces
this process with ``node --expose-gc server.js`` and the same arguments (same process id: a
harness measures node itself). The protocol and options are the Python servers' (see
``server.js``): ``welcome``, ``join_room``, ``bench_start`` (``count``, ``size``, ``rate``),
``--heartbeat S``, ``--compression``, ``STATE`` on SIGUSR1.

Run: ``python -m benchmarks.servers.node_ws [--host H] [--port P] [--heartbeat S]
[--compression]``; prints ``READY <port>`` once listening.
"""

from __future__ import annotations

from benchmarks.peers import NODE_WS, exec_server


def cli() -> None:
    exec_server(NODE_WS)


if __name__ == "__main__":
    cli()

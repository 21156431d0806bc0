"""Peer fan-out and connection server: Go's gorilla/websocket (``benchmarks/peers/go_gorilla``).

Builds the peer into the cache if needed (``go build``, modules through the Go module proxy;
``benchmarks.peers``), then replaces this process with the binary and the same arguments (same
process id: a harness measures the Go server itself). One writer goroutine per connection; the
protocol and options are the Python servers' (see ``main.go``): ``welcome``, ``join_room``,
``bench_start`` (``count``, ``size``, ``rate``), ``--heartbeat S``, ``--compression``,
``STATE`` on SIGUSR1.

Run: ``python -m benchmarks.servers.go_gorilla [--host H] [--port P] [--heartbeat S]
[--compression]``; prints ``READY <port>`` once listening.
"""

from __future__ import annotations

from benchmarks.peers import GO_GORILLA, exec_server


def cli() -> None:
    exec_server(GO_GORILLA)


if __name__ == "__main__":
    cli()

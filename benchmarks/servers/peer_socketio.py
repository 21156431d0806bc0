"""Peer fan-out server: python-socketio (``AsyncServer`` on aiohttp), ``sio.emit(..., room=)``.

Same behaviour as the other bench servers, in Socket.IO events (namespace "/"):

* ``join_room`` ``{"room": R}`` -> ``sio.enter_room(sid, R)``, then emits ``room_joined``
  ``{"room": R}`` to that client;
* ``bench_start`` ``{"count": M, "size": S[, "rate": R]}`` -> M times
  ``await sio.emit("bench", {"type": "bench", "seq": i, "t": <monotonic ns>, "pad": "x" * S},
  room="bench")``. ``emit`` encodes the packet once, starts one task per recipient and awaits
  them all, so it yields to the loop on every broadcast (no extra ``sleep(0)``). With ``rate``
  > 0 the broadcasts are paced at R per second (absolute schedule).

Engine.IO pings every 25 s by default; ``ping_interval`` is raised to 300 s so no heartbeat
traffic lands in a run (the other servers run without heartbeats too); ``--heartbeat S`` sets
it (and ``ping_timeout``) to S instead, as the connection benchmark does. aiohttp's WebSocket
compression is only negotiated when the client offers it (``benchmarks.peer_loadgen`` does not,
unless ``--deflate``), with or without ``--compression`` (accepted for the connection
benchmark's command line). On SIGUSR1 it runs ``gc.collect()`` and prints
``STATE <open> 0 <opened> <closed>`` (Socket.IO connections to the namespace "/").

Run: ``python -m benchmarks.servers.peer_socketio [--host H] [--port P] [--heartbeat S]``;
prints ``READY <port>`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
import time
from typing import Any

import socketio
from aiohttp import web

ROOM = "bench"
counts = {"open": 0, "opened": 0, "closed": 0}


def build(heartbeat: float = 300.0) -> tuple[socketio.AsyncServer, web.Application]:
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        ping_interval=heartbeat,
        ping_timeout=heartbeat,
        transports=["websocket"],
        max_http_buffer_size=2**20,
    )
    app = web.Application()
    sio.attach(app)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any]) -> None:
        counts["open"] += 1
        counts["opened"] += 1

    @sio.event
    async def disconnect(sid: str, reason: str) -> None:
        counts["open"] -= 1
        counts["closed"] += 1

    @sio.on("join_room")
    async def join_room(sid: str, data: dict[str, Any]) -> None:
        room = str(data["room"])
        await sio.enter_room(sid, room)
        await sio.emit("room_joined", {"room": room}, to=sid)

    @sio.on("bench_start")
    async def bench_start(sid: str, data: dict[str, Any]) -> None:
        pad = "x" * int(data.get("size", 0))
        rate = float(data.get("rate", 0) or 0)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(int(data["count"])):
            if rate > 0:
                delay = start + i / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await sio.emit(
                "bench",
                {"type": "bench", "seq": i, "t": time.monotonic_ns(), "pad": pad},
                room=ROOM,
            )

    return sio, app


def report() -> None:
    gc.collect()
    print(f"STATE {counts['open']} 0 {counts['opened']} {counts['closed']}", flush=True)


async def main(host: str, port: int, heartbeat: float = 300.0) -> None:
    _sio, app = build(heartbeat)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, report)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    server = site._server  # the bound port of port 0
    assert server is not None
    bound_port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"READY {bound_port}", flush=True)
    await asyncio.Event().wait()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--heartbeat", type=float, default=300.0, help="seconds (%(default)s)")
    parser.add_argument("--compression", action="store_true", help="accepted; see above")
    args = parser.parse_args()
    try:
        asyncio.run(main(args.host, args.port, args.heartbeat))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    cli()

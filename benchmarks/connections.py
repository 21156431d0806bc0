"""Connection benchmarks: memory per idle connection, 10k held connections, handshake churn.

For each run and each server kind (alternating, so machine noise hits every kind), the harness
starts the server (``benchmarks/servers/conn_*.py``, a subprocess printing ``READY <port>``) and
a load generator (this module with ``--loadgen``, another process: raw asyncio protocols with a
minimal RFC 6455 client that answers pings with masked pongs), and runs four phases, each with
a fresh server and generator:

1. ``memory``: heartbeats every 20 s, compression off. Server RSS (psutil) after a
   ``gc.collect()`` in the server (SIGUSR1), then N connections opened in batches of
   ``--batch``, each reading its ``welcome``; idle ``--idle`` s; RSS again (before and after a
   second ``gc.collect()``). KiB per connection = RSS growth / N. The peak RSS is sampled every
   0.1 s.
2. ``memory_deflate``: the same with compression on (the clients offer permessage-deflate as a
   browser does, ``permessage-deflate; client_max_window_bits``).
3. ``hold``: heartbeats every 5 s, compression off; N connections held ``--hold`` s. Counts the
   connections the generator lost meanwhile (should be 0), the pings it answered, and the
   server's CPU (cores) while the connections are idle.
4. ``churn``: ``--concurrency`` connectors, each in a loop for ``--churn`` s: connect, read the
   welcome, send a close frame, wait for the server to close the TCP connection. Handshakes/s =
   completed cycles / duration.

The memory phases also record the server's CPU per connection opened (handshake + welcome,
``server_cpu_us_per_open``). Kinds: the ``conn_*`` servers, ``socketio`` (python-socketio; its
clients speak Engine.IO/Socket.IO: ``--protocol sio`` below), and the Node and Go peers
(``node_ws``, ``go_gorilla``: ``benchmarks.peers``, built by their launchers).

Run: ``python -m benchmarks.connections [--connections 10000] [--runs 1]
[--servers trio_rt,baseline] [--json out.json]``. The first kind is the numerator of every
ratio. Results go to ``benchmarks/results/connections-<UTC time>.json`` (gitignored).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from benchmarks.fanout import (
    cpu_seconds,
    machine_busy_seconds,
    median,
    stop,
    wait_until_idle,
    write_results,
)
from benchmarks.proc import Proc
from benchmarks.servers._conn_common import raise_fd_limit

SERVERS: dict[str, str] = {
    "trio_rt": "benchmarks.servers.conn_trio_rt",
    # trio_rt with the gc_freeze_interval option (10 s)
    "trio_rt+gcfreeze": "benchmarks.servers.conn_trio_rt",
    # trio_rt with compression_context_takeover=False (shared compressed frames)
    "trio_rt+nocontext": "benchmarks.servers.conn_trio_rt",
    "baseline": "benchmarks.servers.conn_baseline",
    # not a contender: websockets' Trio server without trio_rt (what trio_rt adds to it)
    "websockets_trio": "benchmarks.servers.conn_websockets_trio",
    # python-socketio on aiohttp (clients: --protocol sio)
    "socketio": "benchmarks.servers.peer_socketio",
    # peers in other languages, built into a cache by their launchers (benchmarks.peers)
    "node_ws": "benchmarks.servers.node_ws",
    "go_gorilla": "benchmarks.servers.go_gorilla",
}


SERVER_ARGS: dict[str, list[str]] = {
    "trio_rt+gcfreeze": ["--gc-freeze", "10"],
    "trio_rt+nocontext": ["--no-context-takeover"],
}
# the load generator's options per kind (the default speaks plain WebSocket at "/")
LOADGEN_ARGS: dict[str, list[str]] = {"socketio": ["--protocol", "sio"]}


# -- load generator (runs in its own process: ``--loadgen``) ------------------------------------

MASK = b"\x37\xfa\x21\x3d"
SIO_PATH = "/socket.io/?EIO=4&transport=websocket"
CLOSE_1000 = bytes([0x88, 0x82]) + MASK + bytes([0x03 ^ MASK[0], 0xE8 ^ MASK[1]])


def masked(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (control frames: payload < 126 bytes)."""
    n = len(payload)
    key = (MASK * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return bytes([0x80 | opcode, 0x80 | n]) + MASK + body


class Stats:
    def __init__(self) -> None:
        self.opened = 0
        self.lost = 0
        self.pongs = 0
        self.frames = 0
        self.ping_intervals: list[float] = []  # seconds between two pings on one connection
        self.errors: list[str] = []


class Client(asyncio.Protocol):
    """One WebSocket client: handshake, welcome, pongs; nothing else.

    With ``sio`` set (``--protocol sio``) it speaks Engine.IO 4 / Socket.IO 5: the Engine.IO
    open packet is answered with ``40`` (connect to the namespace "/"), the namespace's
    ``40{...}`` counts as the welcome, and an Engine.IO ping ``2`` is answered with ``3``;
    compressed frames (permessage-deflate with context takeover) are inflated to read them."""

    __slots__ = (
        "buf",
        "closing",
        "done",
        "inflater",
        "last_ping",
        "open",
        "stats",
        "transport",
        "welcome",
    )
    sio = False

    def __init__(self, stats: Stats, welcome: asyncio.Future[None], track_done: bool) -> None:
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.open = False
        self.welcome: asyncio.Future[None] | None = welcome
        self.done: asyncio.Future[None] | None = (
            welcome.get_loop().create_future() if track_done else None
        )
        self.closing = False
        self.last_ping = 0.0
        self.inflater: Any = None  # a zlib decompressobj, for compressed Socket.IO frames

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self._fail(f"handshake refused: {buf[:60]!r}")
                return
            self.open = True
            self.stats.opened += 1
            buf = buf[end + 4 :]
        while len(buf) >= 2:
            buf_first = buf[0]
            opcode = buf_first & 0x0F
            length = buf[1] & 0x7F
            start = 2
            if length == 126:
                if len(buf) < 4:
                    break
                length = int.from_bytes(buf[2:4], "big")
                start = 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length = int.from_bytes(buf[2:10], "big")
                start = 10
            if len(buf) < start + length:
                break
            payload = buf[start : start + length]
            buf = buf[start + length :]
            self.stats.frames += 1
            if opcode == 0x9:
                now = time.monotonic()
                if self.last_ping:
                    self.stats.ping_intervals.append(now - self.last_ping)
                self.last_ping = now
                assert self.transport is not None
                self.transport.write(masked(0xA, payload))
                self.stats.pongs += 1
            elif opcode == 0x8:
                if not self.closing:
                    self.closing = True
                    assert self.transport is not None
                    self.transport.write(masked(0x8, payload[:2]))
            elif self.sio and opcode == 0x1:
                if buf_first & 0x40:  # RSV1: compressed
                    if self.inflater is None:
                        self.inflater = zlib.decompressobj(-15)
                    payload = self.inflater.decompress(payload + b"\x00\x00\xff\xff")
                self._sio_packet(payload)
            elif opcode in (0x1, 0x2, 0x0) and self.welcome is not None:
                if not self.welcome.done():
                    self.welcome.set_result(None)
                self.welcome = None
        self.buf = buf

    def _sio_packet(self, payload: bytes) -> None:
        assert self.transport is not None
        if payload == b"2":  # Engine.IO ping (the server's heartbeat)
            now = time.monotonic()
            if self.last_ping:
                self.stats.ping_intervals.append(now - self.last_ping)
            self.last_ping = now
            self.transport.write(masked(0x1, b"3"))
            self.stats.pongs += 1
        elif payload.startswith(b"40") and self.welcome is not None:
            if not self.welcome.done():
                self.welcome.set_result(None)
            self.welcome = None
        elif payload.startswith(b"0") and self.welcome is not None:  # Engine.IO open
            self.transport.write(masked(0x1, b"40"))

    def close(self) -> None:
        """Start the closing handshake; the server closes the TCP connection."""
        self.closing = True
        if self.transport is not None:
            self.transport.write(CLOSE_1000)

    def _fail(self, reason: str) -> None:
        if self.welcome is not None and not self.welcome.done():
            self.welcome.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.open and not self.closing:
            self.stats.lost += 1
        if self.welcome is not None and not self.welcome.done():
            self.welcome.set_exception(ConnectionError(f"connection lost: {exc}"))
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


class LoadGen:
    def __init__(self, host: str, port: int, path: str = "/") -> None:
        self.host = host
        self.port = port
        self.path = path
        self.stats = Stats()
        self.clients: list[Client] = []

    def request(self, deflate: bool) -> bytes:
        ext = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        return (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\n{ext if deflate else ''}\r\n"
        ).encode()

    async def connect(self, request: bytes, track_done: bool = False) -> Client:
        loop = asyncio.get_running_loop()
        welcome: asyncio.Future[None] = loop.create_future()
        _transport, client = await loop.create_connection(
            lambda: Client(self.stats, welcome, track_done), self.host, self.port
        )
        assert client.transport is not None
        client.transport.write(request)
        try:
            await asyncio.wait_for(welcome, 30)
        except BaseException:
            client.transport.abort()
            raise
        return client

    async def open(self, n: int, batch: int, deflate: bool) -> dict[str, Any]:
        request = self.request(deflate)
        failed = 0
        t0 = time.monotonic()
        for start in range(0, n, batch):
            count = min(batch, n - start)
            results = await asyncio.gather(
                *(self.connect(request) for _ in range(count)), return_exceptions=True
            )
            for r in results:
                if isinstance(r, BaseException):
                    failed += 1
                    if len(self.stats.errors) < 5:
                        self.stats.errors.append(repr(r))
                else:
                    self.clients.append(r)
        return {"ok": n - failed, "failed": failed, "seconds": time.monotonic() - t0}

    async def churn(self, seconds: float, concurrency: int) -> dict[str, Any]:
        request = self.request(False)
        done = 0
        failed = 0
        deadline = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal done, failed
            while time.monotonic() < deadline:
                try:
                    client = await self.connect(request, track_done=True)
                    client.close()
                    assert client.done is not None
                    await asyncio.wait_for(client.done, 10)
                    done += 1
                except (TimeoutError, OSError) as exc:
                    failed += 1
                    if len(self.stats.errors) < 5:
                        self.stats.errors.append(repr(exc))
                    await asyncio.sleep(0.01)

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.monotonic() - t0
        return {"handshakes": done, "failed": failed, "seconds": wall}

    def status(self) -> dict[str, Any]:
        times = os.times()
        return {
            "open": sum(1 for c in self.clients if c.transport and not c.transport.is_closing()),
            "opened": self.stats.opened,
            "lost": self.stats.lost,
            "pongs": self.stats.pongs,
            "frames": self.stats.frames,
            "cpu_s": times.user + times.system,
            "errors": self.stats.errors,
        }


def percentiles(samples: list[float]) -> dict[str, float | int | None]:
    values = sorted(samples)

    def pct(p: float) -> float | None:
        return values[min(len(values) - 1, int(p * len(values)))] if values else None

    return {
        "n": len(values),
        "p50": pct(0.5),
        "p90": pct(0.9),
        "p99": pct(0.99),
        "max": values[-1] if values else None,
    }


async def loadgen_main(host: str, port: int, protocol: str = "ws") -> None:
    Client.sio = protocol == "sio"
    gen = LoadGen(host, port, SIO_PATH if Client.sio else "/")
    print("READY", flush=True)
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        words = line.split()
        if not words or words[0] == "QUIT":
            return
        if words[0] == "OPEN":
            result = await gen.open(int(words[1]), int(words[2]), words[3] == "1")
            print("OPENED " + json.dumps(result), flush=True)
        elif words[0] == "CHURN":
            result = await gen.churn(float(words[1]), int(words[2]))
            print("CHURNED " + json.dumps(result), flush=True)
        elif words[0] == "STATUS":
            print("STATUS " + json.dumps(gen.status()), flush=True)
        elif words[0] == "INTERVALS":  # ping intervals seen since the last INTERVALS
            print("INTERVALS " + json.dumps(percentiles(gen.stats.ping_intervals)), flush=True)
            gen.stats.ping_intervals = []


# -- harness ------------------------------------------------------------------------------------


def start_loadgen(server: Proc, host: str, extra: Sequence[str] = ()) -> Proc:
    """Waits for `server`'s ``READY <port>``, then starts this module's load generator
    (``--loadgen``, with `extra` options such as ``--protocol sio``) against that port;
    returns it once it is ready (stopped if it fails)."""
    port = int(server.out.wait_for("READY", 60).split()[1])
    gen = Proc(
        ["-m", "benchmarks.connections", "--loadgen", "--host", host, "--port", str(port), *extra],
        "loadgen",
    )
    try:
        gen.out.wait_for("READY", 60)
    except BaseException:
        stop(gen.popen)
        raise
    return gen


class RssSampler:
    """Samples a process's RSS every 0.1 s in a thread; keeps the peak."""

    def __init__(self, ps: psutil.Process) -> None:
        self.ps = ps
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.ps.memory_info().rss)
            except psutil.Error:
                return
            self._stop.wait(0.1)

    def close(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def server_state(server: Proc) -> dict[str, int]:
    """gc.collect() in the server (SIGUSR1) and its connection counters."""
    server.popen.send_signal(signal.SIGUSR1)
    words = server.out.wait_for("STATE", 30).split()[1:]
    return dict(
        zip(("open", "heartbeat_timeouts", "opened", "closed"), map(int, words), strict=True)
    )


def gc_stats(server: Proc) -> dict[str, list[float]]:
    """The server's cyclic-GC counters (servers run under benchmarks.gc_probe with --gc)."""
    server.popen.send_signal(signal.SIGUSR2)
    return json.loads(server.out.wait_for("GCSTATS", 30).split(" ", 1)[1])  # type: ignore[no-any-return]


def rss(ps: psutil.Process) -> int:
    return int(ps.memory_info().rss)


def one_phase(kind: str, phase: str, args: argparse.Namespace) -> dict[str, Any]:
    idle_busy = wait_until_idle(args.max_other, args.wait_idle) if args.wait_idle > 0 else None
    heartbeat = {"hold": 5.0}.get(phase, 20.0)
    deflate = phase == "memory_deflate"
    probe = ["-m", "benchmarks.gc_probe"] if args.gc else ["-m"]
    server_args = [*probe, SERVERS.get(kind, kind), "--host", args.host, "--port", "0"]
    server_args += SERVER_ARGS.get(kind, [])
    server_args += ["--heartbeat", str(heartbeat)] + (["--compression"] if deflate else [])
    server = Proc(server_args, f"{kind} server")
    gen: Proc | None = None
    result: dict[str, Any] = {"kind": kind, "phase": phase, "busy_cores_before": idle_busy}
    try:
        gen = start_loadgen(server, args.host, LOADGEN_ARGS.get(kind, ()))
        n = args.connections
        if phase == "churn":
            cpu0, busy0 = cpu_seconds(server.ps), machine_busy_seconds()
            gen_cpu0 = gen.ask("STATUS", "STATUS", 30)["cpu_s"]
            churn = gen.ask(f"CHURN {args.churn} {args.concurrency}", "CHURNED", args.churn + 60)
            status = gen.ask("STATUS", "STATUS", 30)
            cpu, busy = cpu_seconds(server.ps) - cpu0, machine_busy_seconds() - busy0
            wall = churn["seconds"]
            gen_cpu = status["cpu_s"] - gen_cpu0
            result.update(
                churn,
                handshakes_per_s=churn["handshakes"] / wall,
                server_cpu_us_per_handshake=cpu / max(churn["handshakes"], 1) * 1e6,
                server_cpu_fraction=cpu / wall,
                loadgen_cpu_fraction=gen_cpu / wall,
                other_busy_cores=max(0.0, busy - cpu - gen_cpu) / wall,
                errors=status["errors"],
            )
        else:
            time.sleep(0.5)
            before = server_state(server)
            rss0 = rss(server.ps)
            sampler = RssSampler(server.ps)
            cpu0 = cpu_seconds(server.ps)
            opened = gen.ask(f"OPEN {n} {args.batch} {int(deflate)}", "OPENED", 600)
            open_cpu = cpu_seconds(server.ps) - cpu0
            result.update(
                open_seconds=opened["seconds"],
                open_failed=opened["failed"],
                # handshake + welcome, N at a time in batches of --batch
                server_cpu_us_per_open=open_cpu / max(opened["ok"], 1) * 1e6,
            )
            if phase == "hold":
                s0 = gen.ask("STATUS", "STATUS", 30)
                gen.ask("INTERVALS", "INTERVALS", 30)  # forget the opening's intervals
                gc0 = gc_stats(server) if args.gc else None
                cpu0, busy0, t0 = cpu_seconds(server.ps), machine_busy_seconds(), time.monotonic()
                time.sleep(args.hold)
                cpu, busy = cpu_seconds(server.ps) - cpu0, machine_busy_seconds() - busy0
                wall = time.monotonic() - t0
                if gc0 is not None:
                    gc1 = gc_stats(server)
                    result.update(
                        gc_cpu_s=sum(gc1[g][1] - gc0[g][1] for g in gc1),
                        gc_full_collections=gc1["2"][0] - gc0["2"][0],
                        gc_longest_s=max(v[2] for v in gc1.values()),  # since start
                    )
                result["ping_intervals"] = gen.ask("INTERVALS", "INTERVALS", 30)
                s1 = gen.ask("STATUS", "STATUS", 30)
                gen_cpu = s1["cpu_s"] - s0["cpu_s"]
                result.update(
                    hold_seconds=wall,
                    lost=s1["lost"] - s0["lost"],
                    still_open=s1["open"],
                    pings_answered=s1["pongs"] - s0["pongs"],
                    server_cpu_fraction=cpu / wall,
                    server_cpu_us_per_ping=cpu / max(s1["pongs"] - s0["pongs"], 1) * 1e6,
                    loadgen_cpu_fraction=gen_cpu / wall,
                    other_busy_cores=max(0.0, busy - cpu - gen_cpu) / wall,
                )
            else:
                time.sleep(args.idle)
            rss1 = rss(server.ps)
            after = server_state(server)
            rss2 = rss(server.ps)
            peak = sampler.close()
            status = gen.ask("STATUS", "STATUS", 30)
            connected = status["open"]
            result.update(
                rss_before=rss0,
                rss_after=rss1,
                rss_after_gc=rss2,
                rss_peak=max(peak, rss1, rss2),
                connected=connected,
                server_open=after["open"] - before["open"],
                heartbeat_timeouts=after["heartbeat_timeouts"],
                lost_total=status["lost"],
                kib_per_conn=(rss1 - rss0) / max(connected, 1) / 1024,
                kib_per_conn_gc=(rss2 - rss0) / max(connected, 1) / 1024,
                kib_per_conn_peak=(max(peak, rss1, rss2) - rss0) / max(connected, 1) / 1024,
                errors=status["errors"],
            )
        if gen.popen.stdin is not None:
            gen.popen.stdin.write("QUIT\n")
            gen.popen.stdin.flush()
    finally:
        if gen is not None:
            stop(gen.popen)
        stop(server.popen)
    result["noisy"] = (result.get("other_busy_cores") or 0.0) > args.max_other
    return result


PHASES = ("memory", "memory_deflate", "hold", "churn")


def describe(r: dict[str, Any]) -> str:
    if r["phase"] == "churn":
        return (
            f"{r['handshakes_per_s']:8,.0f} handshakes/s  server"
            f" {r['server_cpu_us_per_handshake']:6.0f} us/handshake"
            f" ({r['server_cpu_fraction']:.2f} core)  gen {r['loadgen_cpu_fraction']:.2f} core"
            f"  other {r['other_busy_cores']:.2f}  failed {r['failed']}"
        )
    text = (
        f"{r['kib_per_conn']:6.1f} KiB/conn (after gc {r['kib_per_conn_gc']:.1f},"
        f" peak {r['kib_per_conn_peak']:.1f})  connected {r['connected']}"
        f" (server sees {r['server_open']})  opened in {r['open_seconds']:.1f} s"
    )
    if r["phase"] == "hold":
        iv = r["ping_intervals"]
        text += (
            f"  held {r['hold_seconds']:.0f} s: lost {r['lost']}, pings {r['pings_answered']},"
            f" server {r['server_cpu_fraction']:.3f} core ({r['server_cpu_us_per_ping']:.0f}"
            f" us/ping), other {r['other_busy_cores']:.2f}"
        )
        if iv["n"]:
            text += f"; ping interval p50 {iv['p50']:.2f} p99 {iv['p99']:.2f} max {iv['max']:.2f} s"
        if "gc_cpu_s" in r:
            text += (
                f"; GC {r['gc_cpu_s']:.2f} s CPU, {r['gc_full_collections']} full,"
                f" longest {r['gc_longest_s'] * 1000:.0f} ms"
            )
    return text


def summarize(runs: list[dict[str, Any]], kinds: list[str]) -> dict[str, Any]:
    def med(kind: str, phase: str, key: str) -> float:
        return median([r[key] for r in runs if r["kind"] == kind and r["phase"] == phase])

    per_kind: dict[str, dict[str, float]] = {}
    for kind in kinds:
        per_kind[kind] = {
            "kib_per_conn": med(kind, "memory", "kib_per_conn"),
            "kib_per_conn_gc": med(kind, "memory", "kib_per_conn_gc"),
            "kib_per_conn_peak": med(kind, "memory", "kib_per_conn_peak"),
            "kib_per_conn_deflate": med(kind, "memory_deflate", "kib_per_conn"),
            "kib_per_conn_deflate_gc": med(kind, "memory_deflate", "kib_per_conn_gc"),
            "kib_per_conn_deflate_peak": med(kind, "memory_deflate", "kib_per_conn_peak"),
            "hold_lost": med(kind, "hold", "lost"),
            "hold_connected": med(kind, "hold", "connected"),
            "hold_server_cpu_fraction": med(kind, "hold", "server_cpu_fraction"),
            "hold_server_cpu_us_per_ping": med(kind, "hold", "server_cpu_us_per_ping"),
            "kib_per_conn_hold": med(kind, "hold", "kib_per_conn"),
            "open_seconds": med(kind, "memory", "open_seconds"),
            "handshakes_per_s": med(kind, "churn", "handshakes_per_s"),
            "server_cpu_us_per_handshake": med(kind, "churn", "server_cpu_us_per_handshake"),
            "noisy_phases": sum(1 for r in runs if r["kind"] == kind and r["noisy"]),
        }
    a, b = kinds[0], kinds[1] if len(kinds) > 1 else kinds[0]
    ka, kb = per_kind[a], per_kind[b]
    return {
        "ratio_of": f"{a}/{b}",
        "ratios": {
            # memory and CPU: a's / b's (< 1 means a uses less); handshakes/s: a's / b's
            "kib_per_conn": ka["kib_per_conn"] / kb["kib_per_conn"],
            "kib_per_conn_deflate": ka["kib_per_conn_deflate"] / kb["kib_per_conn_deflate"],
            "hold_server_cpu": ka["hold_server_cpu_fraction"] / kb["hold_server_cpu_fraction"],
            "handshakes_per_s": ka["handshakes_per_s"] / kb["handshakes_per_s"],
            "server_cpu_per_handshake": ka["server_cpu_us_per_handshake"]
            / kb["server_cpu_us_per_handshake"],
        },
        "per_kind": per_kind,
    }


def print_table(summary: dict[str, Any], args: argparse.Namespace) -> None:
    r = summary["ratios"]
    print()
    print(
        f"connections: N={args.connections}, hold {args.hold:.0f} s (heartbeat 5 s),"
        f" churn {args.churn:.0f} s x {args.concurrency} connectors"
        f" (medians of {args.runs} run(s))"
    )
    print(
        f"RATIOS {summary['ratio_of']}: memory/conn {r['kib_per_conn']:.2f}"
        f" (deflate {r['kib_per_conn_deflate']:.2f}, lower is better);"
        f" handshakes/s {r['handshakes_per_s']:.2f} (CPU/handshake"
        f" {r['server_cpu_per_handshake']:.2f}); idle CPU holding N {r['hold_server_cpu']:.2f}"
    )
    header = (
        f"{'server':<10}{'KiB/conn':>9}{'(gc)':>7}{'deflate':>9}{'(gc)':>7}{'peak':>7}"
        f"{'hold lost':>10}{'idle CPU':>9}{'us/ping':>8}{'hs/s':>8}{'us/hs':>7}"
    )
    print(header)
    print("-" * len(header))
    for kind, k in summary["per_kind"].items():
        flag = f"  ({k['noisy_phases']} noisy)" if k["noisy_phases"] else ""
        print(
            f"{kind:<10}{k['kib_per_conn']:>9.1f}{k['kib_per_conn_gc']:>7.1f}"
            f"{k['kib_per_conn_deflate']:>9.1f}{k['kib_per_conn_deflate_gc']:>7.1f}"
            f"{k['kib_per_conn_peak']:>7.1f}{k['hold_lost']:>10.0f}"
            f"{k['hold_server_cpu_fraction']:>9.3f}{k['hold_server_cpu_us_per_ping']:>8.0f}"
            f"{k['handshakes_per_s']:>8,.0f}{k['server_cpu_us_per_handshake']:>7.0f}{flag}"
        )
    print("(KiB/conn: server RSS growth / connections, idle, heartbeat 20 s; (gc): after")
    print(" gc.collect(); peak: highest RSS sampled while opening; idle CPU: server cores while")
    print(" holding N with heartbeat 5 s; hs/s: handshakes/s; us/hs: server CPU per handshake)")


def arg_parser() -> argparse.ArgumentParser:
    """The command line; `one_phase` takes what it parses (``benchmarks.table`` builds one)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--servers", default="trio_rt,baseline")
    parser.add_argument("--phases", default=",".join(PHASES), help="%(default)s")
    parser.add_argument("--batch", type=int, default=500, help="connections opened at once")
    parser.add_argument("--idle", type=float, default=3.0, help="idle seconds before RSS")
    parser.add_argument("--hold", type=float, default=30.0, help="seconds to hold N connections")
    parser.add_argument("--churn", type=float, default=10.0, help="seconds of churn")
    parser.add_argument("--concurrency", type=int, default=50, help="concurrent connectors")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--max-other", type=float, default=0.25)
    parser.add_argument("--wait-idle", type=float, default=5.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--gc", action="store_true", help="run servers under benchmarks.gc_probe (GC CPU in hold)"
    )
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--protocol", choices=["ws", "sio"], default="ws", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = arg_parser().parse_args(argv)
    raise_fd_limit()
    if args.loadgen:
        asyncio.run(loadgen_main(args.host, args.port, args.protocol))
        return 0

    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    started = dt.datetime.now(dt.UTC)
    runs: list[dict[str, Any]] = []
    for run in range(args.runs):
        for phase in phases:
            for kind in kinds:
                result = one_phase(kind, phase, args)
                result["run"] = run
                runs.append(result)
                print(
                    f"run {run + 1}/{args.runs} {phase:<15}{kind:<10}{describe(result)}"
                    + ("  NOISY" if result["noisy"] else ""),
                    flush=True,
                )
                for error in result.get("errors", []):
                    print(f"    error: {error}", file=sys.stderr)

    summary = summarize(runs, kinds) if set(phases) == set(PHASES) else None
    if summary is not None:
        print_table(summary, args)
    write_results(
        "connections",
        started,
        {k: v for k, v in vars(args).items() if k not in ("loadgen", "port", "protocol", "json")},
        {"summary": summary, "runs": runs},
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Load generator for the fan-out benchmark: N WebSocket clients in one asyncio process.

The clients are asyncio ``BufferedProtocol`` objects implementing a minimal RFC 6455 client
(handshake, masked client frames, unmasked server frames, ping -> pong, no extensions unless a
subclass sets ``deflate``, as ``benchmarks.peer_loadgen`` does) rather than a full WebSocket
library: receiving must cost the generator much less than sending costs
the server, or the benchmark would measure the generator. Per received chunk it takes ONE
``time.monotonic_ns()`` reading; per frame it parses the header and pulls the integer after
``"t":`` out of the payload without decoding the JSON. It reports, besides deliveries and
latencies, its own CPU use, deliveries per read and the drain time (server's last broadcast to
last delivery): a generator that cannot keep up reads many deliveries at once and drains late.

Protocol with the harness (``benchmarks.fanout``), over stdin/stdout:

1. connects N clients, reads each one's welcome, sends ``join_room`` and waits for
   ``room_joined``; then prints ``JOINED``;
2. waits for a line ``GO`` on stdin, then client 0 sends
   ``{"type": "bench_start", "count": M, "size": S}``;
3. when every client has received M bench messages (or nothing arrived for ``--idle-timeout``
   seconds), prints ``RESULT <json>`` and exits.

Run by hand: ``python -m benchmarks.loadgen --port P --clients 200 --messages 2000`` (then type GO).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import sys
import time
import zlib
from array import array
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

ROOM = "bench"
T_KEY = b'"t":'
INFLATE_TAIL = b"\x00\x00\xff\xff"
DEFLATE_OFFER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


def mask_frame(opcode: int, payload: bytes) -> bytes:
    """A complete, masked client frame (FIN set)."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        header = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    repeated = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")
    return header + key + masked


class Stats:
    """Shared by all clients of the process."""

    def __init__(self, clients: int, messages: int) -> None:
        self.messages = messages
        # ns, one per delivery, one array per server port (a cluster run splits them)
        self.latencies_by_port: dict[int, array[int]] = {}
        self.remaining = clients  # clients that have not yet received all messages
        self.last_delivery_ns = 0
        self.running = False  # set on GO: only then are messages with "t" counted
        self.done = asyncio.get_running_loop().create_future()
        self.errors: list[str] = []
        self.reads = 0  # reads (recv_into) while running
        self.max_t = 0  # latest server timestamp seen

    def latencies_for(self, port: int) -> array[int]:
        return self.latencies_by_port.setdefault(port, array("q"))

    def deliveries(self) -> int:
        return sum(len(a) for a in self.latencies_by_port.values())

    def client_finished(self) -> None:
        self.remaining -= 1
        if self.remaining == 0 and not self.done.done():
            self.done.set_result(None)


class Client(asyncio.BufferedProtocol):
    """One WebSocket client. ``BufferedProtocol``: the loop ``recv_into``s a preallocated
    buffer; a plain ``Protocol`` gets a fresh 256 KiB ``bytes`` per read (an mmap, page faults
    and a munmap each time), a large part of the generator's kernel time."""

    BUFFER_SIZE = 1 << 16
    # What the handshake asks for (benchmarks.peer_loadgen's subclass changes them): the
    # request path, and whether to offer permessage-deflate without context takeover, require
    # the server to accept it and inflate compressed (RSV1) frames, each with a fresh context.
    path = "/"
    deflate = False

    def __init__(self, host: str, port: int, stats: Stats) -> None:
        self.host = host
        self.port = port
        self.stats = stats
        self.latencies = stats.latencies_for(port)  # appended to in the hot path
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray(self.BUFFER_SIZE)
        self.view = memoryview(self.buf)
        self.fill = 0  # bytes of self.buf in use
        self.handshaken = False
        self.received = 0  # bench messages
        self.control: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.opened = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()

    # -- asyncio.BufferedProtocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        key = base64.b64encode(os.urandom(16)).decode()
        extra = f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n" if self.deflate else ""
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{extra}\r\n"
        )
        self.transport.write(request.encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during handshake: {exc!r}"))

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.fill == len(self.buf):  # one frame larger than the buffer: grow
            self.buf.extend(bytes(len(self.buf)))
            self.view = memoryview(self.buf)
        return self.view[self.fill :]

    def buffer_updated(self, nbytes: int) -> None:
        now = time.monotonic_ns()
        buf = self.buf
        n = self.fill = self.fill + nbytes
        pos = 0
        if not self.handshaken:
            end = buf.find(b"\r\n\r\n", 0, n)
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            if not status.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(f"handshake failed: {status!r}"))
                return
            if self.deflate and b"permessage-deflate" not in bytes(buf[:end]).lower():
                self.opened.set_exception(ConnectionError("server refused permessage-deflate"))
                return
            self.handshaken = True
            self.opened.set_result(None)
            pos = end + 4
        stats = self.stats
        latencies = self.latencies
        running = stats.running
        got = 0
        t = 0
        while n - pos >= 2:
            b0 = buf[pos]
            length = buf[pos + 1]
            if length & 0x80:
                raise ConnectionError("masked server frame")
            if length < 126:
                start = pos + 2
            elif length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            else:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > n:
                break
            if b0 == 0x81:  # FIN + text
                i = buf.find(T_KEY, start, end) if running else -1
                if i >= 0:
                    # stamp() inlined: a call per delivery would show in the generator's CPU
                    j = i + 4
                    k = buf.find(b",", j, end)
                    if k < 0:
                        k = buf.find(b"}", j, end)
                    t = int(buf[j:k])
                    latencies.append(now - t)
                    got += 1
                else:
                    self.control_message(buf[start:end])
            elif b0 == 0xC1 and self.deflate:  # FIN + text + RSV1: compressed
                payload = zlib.decompressobj(-15).decompress(bytes(buf[start:end]) + INFLATE_TAIL)
                i = payload.find(T_KEY) if running else -1
                if i >= 0:
                    t = stamp(payload, i + 4, len(payload))
                    latencies.append(now - t)
                    got += 1
                else:
                    self.control_message(payload)
            elif b0 == 0x89:  # ping
                self.send(0xA, bytes(buf[start:end]))
            elif b0 == 0x88:  # close
                if running:
                    self.stats.errors.append(f"server closed: {bytes(buf[start:end])!r}")
                assert self.transport is not None
                self.transport.close()
            else:
                self.stats.errors.append(f"unexpected frame byte {b0:#x}")
            pos = end
        if pos:
            rest = n - pos
            if rest:
                buf[:rest] = buf[pos:n]
            self.fill = rest
        if running:
            stats.reads += 1
        if got:
            before = self.received
            self.received = before + got
            stats.last_delivery_ns = now
            if t > stats.max_t:
                stats.max_t = t
            if before < stats.messages <= self.received:
                stats.client_finished()

    # -- helpers ---------------------------------------------------------------------------

    def control_message(self, payload: bytes | bytearray) -> None:
        """A text message without a server timestamp (or any, before ``GO``): queued for
        `expect` as a dict. A subclass speaking another framing overrides it."""
        self.control.put_nowait(json.loads(payload))

    def send(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(mask_frame(opcode, payload))

    def send_json(self, message: dict[str, Any]) -> None:
        self.send(0x1, json.dumps(message).encode())

    async def expect(self, kind: str) -> dict[str, Any]:
        """The next control message of type ``kind`` (others are dropped)."""
        while True:
            message = await self.control.get()
            if message.get("type") == kind:
                return message


def stamp(payload: bytes | bytearray, start: int, end: int) -> int:
    """The integer at ``payload[start:]`` (just after ``"t":``), ended by ``,`` or ``}`` before
    ``end``."""
    k = payload.find(b",", start, end)
    if k < 0:
        k = payload.find(b"}", start, end)
    return int(payload[start:k])


async def open_client(
    host: str, port: int, stats: Stats, client_class: type[Client] = Client
) -> Client:
    loop = asyncio.get_running_loop()
    _transport, client = await loop.create_connection(
        lambda: client_class(host, port, stats), host, port
    )
    await asyncio.wait_for(client.opened, 30)
    return client


async def join(client: Client) -> None:
    async with asyncio.timeout(30):
        await client.expect("welcome")
        client.send_json({"type": "join_room", "room": ROOM})
        await client.expect("room_joined")


def percentile(sorted_values: array[int] | list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return float(sorted_values[index])


def cpu_seconds() -> tuple[float, float]:
    """(user, system) CPU seconds of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


async def run(
    host: str,
    ports: Sequence[int],
    clients: int,
    messages: int,
    size: int,
    idle_timeout: float,
    *,
    client_class: type[Client] = Client,
    join_room: Callable[[Client], Awaitable[None]] = join,
    rate: float = 0.0,
) -> tuple[dict[str, Any], list[Client]]:
    """The whole protocol with the harness (module docstring), client ``i`` on
    ``ports[i % len(ports)]`` (client 0, on ``ports[0]``, sends ``bench_start``; a port may
    appear several times to put more clients on it). `rate` > 0: ``bench_start`` asks for that
    many broadcasts per second (absolute schedule) instead of a burst. Returns the ``RESULT``
    dict and the clients, closed, whose ``received`` counts stay."""
    stats = Stats(clients, messages)
    conns: list[Client] = []
    batch = 50  # connect in batches: stay below the server's listen backlog
    for first in range(0, clients, batch):
        opened = await asyncio.gather(
            *(
                open_client(host, ports[i % len(ports)], stats, client_class)
                for i in range(first, min(clients, first + batch))
            )
        )
        conns.extend(opened)
    await asyncio.gather(*(join_room(c) for c in conns))
    print("JOINED", flush=True)

    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if line.strip() != "GO":
        raise SystemExit(f"expected GO, got {line!r}")

    stats.running = True
    cpu_before = cpu_seconds()
    start_ns = time.monotonic_ns()
    start: dict[str, Any] = {"type": "bench_start", "count": messages, "size": size}
    if rate > 0:
        start["rate"] = rate
    conns[0].send_json(start)
    completed = True
    last_count, last_change = -1, time.monotonic()
    while not stats.done.done():
        try:
            await asyncio.wait_for(asyncio.shield(stats.done), 0.25)
        except TimeoutError:
            count = stats.deliveries()
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > idle_timeout:
                completed = False  # some deliveries never came
                break
    cpu_after = cpu_seconds()
    end_ns = stats.last_delivery_ns
    elapsed = (end_ns - start_ns) / 1e9 if end_ns else float("nan")
    # The generator's CPU is measured up to now, a little past the last delivery: an overestimate.
    wall_to_now = (time.monotonic_ns() - start_ns) / 1e9
    user, system = (after - before for after, before in zip(cpu_after, cpu_before, strict=True))

    stats.running = False
    deliveries = stats.deliveries()
    lat = sorted(v for a in stats.latencies_by_port.values() for v in a)
    ports = list(dict.fromkeys(ports))  # each port once, in order
    by_port = [sorted(stats.latencies_by_port.get(port, ())) for port in ports]
    for c in conns:  # close handshake, so the server logs no errors
        c.send(0x8, (1000).to_bytes(2, "big"))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.closed for c in conns)), 10)
    result: dict[str, Any] = {
        "clients": clients,
        "messages": messages,
        "size": size,
        "expected_deliveries": clients * messages,
        "deliveries": deliveries,
        "completed": completed,
        "elapsed_s": elapsed,
        "deliveries_per_s": deliveries / elapsed if elapsed else float("nan"),
        "latency_p50_us": percentile(lat, 0.50) / 1e3,
        "latency_p99_us": percentile(lat, 0.99) / 1e3,
        "latency_max_us": (lat[-1] / 1e3) if lat else float("nan"),
        # per port, in the order of `ports` (local vs remote clients in a cluster run)
        "latency_p50_us_per_port": [percentile(p, 0.50) / 1e3 for p in by_port],
        "latency_p99_us_per_port": [percentile(p, 0.99) / 1e3 for p in by_port],
        "loadgen_cpu_s": user + system,
        "loadgen_user_s": user,
        "loadgen_system_s": system,
        "loadgen_cpu_fraction": (user + system) / wall_to_now,
        "deliveries_per_read": deliveries / stats.reads if stats.reads else None,
        # from the server's last broadcast timestamp to the last delivery: a generator that
        # falls behind shows up here (and as many deliveries per read)
        "drain_ms": (end_ns - stats.max_t) / 1e6 if end_ns else None,
        "errors": stats.errors[:10],
    }
    return result, conns


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--clients``, ``--messages``, ``--size`` and ``--idle-timeout``: `run`'s parameters
    after the host and port(s), which each command line names its own way."""
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=70)
    parser.add_argument("--idle-timeout", type=float, default=10.0)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    add_run_arguments(parser)
    args = parser.parse_args()
    # (uvloop was tried for the generator: no gain, the kernel's share dominates)
    result, _clients = asyncio.run(
        run(args.host, [args.port], args.clients, args.messages, args.size, args.idle_timeout)
    )
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    cli()

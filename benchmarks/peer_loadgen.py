"""Load generator variants for the peer benchmarks: ``benchmarks.loadgen`` plus three options.

* ``--protocol sio``: the clients speak Engine.IO 4 / Socket.IO 5 over WebSocket, raw:
  ``GET /socket.io/?EIO=4&transport=websocket``, read the Engine.IO open packet ``0{...}``,
  send ``40`` (connect to the namespace "/"), wait for ``40{...}``, then send
  ``42["join_room",{"room":"bench"}]`` and wait for ``42["room_joined",...]``. An Engine.IO
  ping ``2`` is answered with ``3`` at once. Events arrive as ``42["bench",{...,"t":...}]``;
  ``bench_start`` is sent as ``42["bench_start",{"count":M,"size":S}]``.
* ``--deflate``: each client offers ``permessage-deflate; server_no_context_takeover;
  client_no_context_takeover`` and fails if the server does not accept it. Compressed frames
  (RSV1) are inflated with a fresh raw-deflate context per message (allowed by
  ``server_no_context_takeover``); the client's own frames are sent uncompressed.
* ``--rate R``: ``bench_start`` carries ``"rate": R`` (broadcasts per second), honoured by the
  ``latency_*`` servers.

Everything else (timing, the stdin/stdout protocol with the harness, the ``RESULT`` line) is
``benchmarks.loadgen``'s: this module swaps in its client class and join step and calls
``loadgen.run``.

Run: ``python -m benchmarks.peer_loadgen --port P --clients N --messages M [--protocol sio]
[--deflate] [--rate R]`` (then type GO).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import time
import zlib
from typing import Any

from benchmarks import loadgen

T_KEY = loadgen.T_KEY
INFLATE_TAIL = b"\x00\x00\xff\xff"
DEFLATE_OFFER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


class PeerClient(loadgen.Client):
    """``loadgen.Client`` with Socket.IO framing and/or permessage-deflate."""

    sio = False
    deflate = False
    rate = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        path = "/socket.io/?EIO=4&transport=websocket" if self.sio else "/"
        extra = f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n" if self.deflate else ""
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{extra}\r\n"
        )
        self.transport.write(request.encode())

    def control_message(self, payload: bytes) -> None:
        if not self.sio:
            self.control.put_nowait(json.loads(payload))
            return
        if payload == b"2":  # Engine.IO ping -> pong
            self.send(0x1, b"3")
        elif payload.startswith(b"42"):
            name, *args = json.loads(payload[2:])
            data = args[0] if args and isinstance(args[0], dict) else {}
            self.control.put_nowait({**data, "type": name})
        elif payload.startswith(b"40"):
            self.control.put_nowait({"type": "sio_connected"})
        elif payload.startswith(b"0"):
            self.control.put_nowait({"type": "eio_open"})
        # other Engine.IO/Socket.IO packets are ignored

    def buffer_updated(self, nbytes: int) -> None:
        now = time.monotonic_ns()
        buf = self.buf
        n = self.fill = self.fill + nbytes
        pos = 0
        if not self.handshaken:
            end = buf.find(b"\r\n\r\n", 0, n)
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            status = bytes(buf[: buf.find(b"\r\n")])
            if not status.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(f"handshake failed: {status!r}"))
                return
            if self.deflate and b"permessage-deflate" not in head:
                self.opened.set_exception(ConnectionError("server refused permessage-deflate"))
                return
            self.handshaken = True
            self.opened.set_result(None)
            pos = end + 4
        stats = self.stats
        latencies = stats.latencies
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
            if b0 == 0x81 or b0 == 0xC1:  # FIN + text (0xC1: RSV1, compressed)
                if b0 == 0xC1:
                    payload: bytes | bytearray = zlib.decompressobj(-15).decompress(
                        bytes(buf[start:end]) + INFLATE_TAIL
                    )
                    s, e = 0, len(payload)
                else:
                    payload, s, e = buf, start, end
                i = payload.find(T_KEY, s, e) if running else -1
                if i >= 0:
                    j = i + 4
                    k = payload.find(b",", j, e)
                    if k < 0:
                        k = payload.find(b"}", j, e)
                    t = int(payload[j:k])
                    latencies.append(now - t)
                    got += 1
                else:
                    self.control_message(bytes(payload[s:e]))
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

    def send_json(self, message: dict[str, Any]) -> None:
        if message.get("type") == "bench_start" and self.rate:
            message = {**message, "rate": self.rate}
        if self.sio:
            name = message.pop("type")
            self.send(0x1, b"42" + json.dumps([name, message]).encode())
        else:
            super().send_json(message)


async def join(client: loadgen.Client) -> None:
    async with asyncio.timeout(30):
        if isinstance(client, PeerClient) and client.sio:
            await client.expect("eio_open")
            client.send(0x1, b"40")
            await client.expect("sio_connected")
            client.send_json({"type": "join_room", "room": loadgen.ROOM})
            await client.expect("room_joined")
        else:
            await client.expect("welcome")
            client.send_json({"type": "join_room", "room": loadgen.ROOM})
            await client.expect("room_joined")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=70)
    parser.add_argument("--idle-timeout", type=float, default=10.0)
    parser.add_argument("--protocol", choices=["ws", "sio"], default="ws")
    parser.add_argument("--deflate", action="store_true")
    parser.add_argument("--rate", type=float, default=0.0, help="broadcasts/s (0: unpaced)")
    args = parser.parse_args()
    PeerClient.sio = args.protocol == "sio"
    PeerClient.deflate = args.deflate
    PeerClient.rate = args.rate
    loadgen.Client = PeerClient  # type: ignore[misc]
    loadgen.join = join
    result = asyncio.run(
        loadgen.run(args.host, args.port, args.clients, args.messages, args.size, args.idle_timeout)
    )
    result.update(protocol=args.protocol, deflate=args.deflate, rate=args.rate)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    cli()

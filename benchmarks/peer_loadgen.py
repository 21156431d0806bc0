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

Everything else (the frame parser, which inflates when ``deflate`` is set, timing, the
stdin/stdout protocol with the harness, the ``RESULT`` line) is ``benchmarks.loadgen``'s: this
module passes its client class and join step to ``loadgen.run``.

Run: ``python -m benchmarks.peer_loadgen --port P --clients N --messages M [--protocol sio]
[--deflate] [--rate R]`` (then type GO).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from benchmarks import loadgen

SIO_PATH = "/socket.io/?EIO=4&transport=websocket"


class PeerClient(loadgen.Client):
    """``loadgen.Client`` with Socket.IO framing and/or permessage-deflate (``deflate``)."""

    sio = False
    rate = 0.0

    def control_message(self, payload: bytes | bytearray) -> None:
        if not self.sio:
            super().control_message(payload)
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

    def send_json(self, message: dict[str, Any]) -> None:
        if message.get("type") == "bench_start" and self.rate:
            message = {**message, "rate": self.rate}
        if self.sio:
            name = message.pop("type")
            self.send(0x1, b"42" + json.dumps([name, message]).encode())
        else:
            super().send_json(message)


async def join(client: loadgen.Client) -> None:
    if not (isinstance(client, PeerClient) and client.sio):
        await loadgen.join(client)
        return
    async with asyncio.timeout(30):
        await client.expect("eio_open")
        client.send(0x1, b"40")
        await client.expect("sio_connected")
        client.send_json({"type": "join_room", "room": loadgen.ROOM})
        await client.expect("room_joined")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    loadgen.add_run_arguments(parser)
    parser.add_argument("--protocol", choices=["ws", "sio"], default="ws")
    parser.add_argument("--deflate", action="store_true")
    parser.add_argument("--rate", type=float, default=0.0, help="broadcasts/s (0: unpaced)")
    args = parser.parse_args()
    PeerClient.sio = args.protocol == "sio"
    PeerClient.path = SIO_PATH if PeerClient.sio else "/"
    PeerClient.deflate = args.deflate
    PeerClient.rate = args.rate
    result, _clients = asyncio.run(
        loadgen.run(
            args.host,
            [args.port],
            args.clients,
            args.messages,
            args.size,
            args.idle_timeout,
            client_class=PeerClient,
            join_room=join,
        )
    )
    result.update(protocol=args.protocol, deflate=args.deflate, rate=args.rate)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    cli()

"""The reader in the connection's own task (no websockets `recv_events` task): what websockets'
reader did must still happen while a message handler runs (pings answered, heartbeat pongs
seen, the close handshake done, flow control), protocol errors still close with their codes,
and an idle connection keeps no task besides its handler task (docs/performance.md)."""

from __future__ import annotations

import base64
import os
import socket
import struct
from typing import Any

import pytest
import trio
from websockets.exceptions import ConnectionClosed
from websockets.protocol import Protocol
from websockets.trio.client import connect

from trio_rt import Connection
from trio_rt._transport.direct_stream import DirectStream

from ..conftest import client, count_tasks, wait_until


def _blocking_handler(manager: Any) -> tuple[trio.Event, trio.Event, list[int]]:
    """A "block" message handler that waits for `release`; `entered` is set when it runs."""
    entered, release = trio.Event(), trio.Event()
    handled: list[int] = []

    @manager.on_message("block")
    async def block(conn: Connection, msg: dict[str, Any]) -> None:
        entered.set()
        await release.wait()
        handled.append(-1)

    @manager.on_message("n")
    async def n(conn: Connection, msg: dict[str, Any]) -> None:
        handled.append(msg["payload"]["i"])

    return entered, release, handled


def _record_disconnects(manager: Any) -> list[int]:
    """The close codes `manager`'s disconnect handler is called with, in order."""
    codes: list[int] = []

    @manager.on_disconnect
    async def gone(conn: Connection, code: int) -> None:
        codes.append(code)

    return codes


async def test_an_idle_connection_keeps_no_task_but_its_handler_and_a_fresh_frame_parser(
    make_manager: Any,
) -> None:
    manager = make_manager(heartbeat_interval=30)
    _blocking_handler(manager)
    async with manager, client(manager) as c:
        (conn,) = manager.connections.values()
        ws: Any = conn._ws
        # No recv_events task, no message handler task once the messages are handled.
        await c.send({"type": "n", "payload": {"i": 1}})
        assert (await c.request({"type": "ping"}))["type"] == "pong"
        await wait_until(lambda: not conn._handling)
        assert list(ws.nursery.child_tasks) == []
        # websockets' request parser (its frame holds the request) was swapped for a frame parser.
        assert ws.protocol.parser.gi_code is Protocol.parse.__code__
        assert (await c.request({"type": "ping"}))["type"] == "pong"


async def test_pings_and_heartbeat_pongs_are_answered_while_a_message_handler_runs(
    make_manager: Any,
) -> None:
    manager = make_manager(heartbeat_interval=0.2, heartbeat_timeout=0.2)
    entered, release, handled = _blocking_handler(manager)
    async with manager, client(manager) as c:
        (conn,) = manager.connections.values()
        await c.send({"type": "block"})
        with trio.fail_after(5):
            await entered.wait()
            # The client's ping is answered by the server while the handler is blocked.
            pong = await c.ws.ping()
            await pong.wait()
        # Several heartbeats go by: the client's automatic pongs are read and reach the
        # heartbeat, so the connection is not closed for a missing pong (4001) meanwhile.
        pongs: list[bytes] = []
        seen = conn.heartbeat_pong

        def count(payload: bytes) -> None:
            pongs.append(payload)
            seen(payload)

        conn.heartbeat_pong = count  # type: ignore[method-assign]
        await wait_until(lambda: len(pongs) >= 3 or conn.closed)
        assert not conn.closed and manager.stats.heartbeat_timeouts == 0
        assert not entered.is_set() or not release.is_set()  # still blocked all along
        release.set()
        await c.send({"type": "n", "payload": {"i": 1}})
        await wait_until(lambda: handled == [-1, 1])


async def test_the_peers_close_is_answered_while_a_handler_runs_and_disconnect_comes_after(
    make_manager: Any,
) -> None:
    manager = make_manager()
    entered, release, handled = _blocking_handler(manager)
    disconnected = _record_disconnects(manager)

    async with manager:
        async with connect(manager.url, ping_interval=None) as ws:
            await ws.recv()  # welcome
            await ws.send('{"type": "block"}')
            await ws.send('{"type": "n", "payload": {"i": 7}}')  # received before the close
            with trio.fail_after(5):
                await entered.wait()
                await ws.aclose(1000)  # the server's reader answers the close frame now
            assert ws.close_code == 1000
        assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000
        assert disconnected == []  # the handler still runs: the connection has not ended
        release.set()
        await wait_until(lambda: disconnected == [1000])
        # What was received before the close was still handled, in order.
        assert handled == [-1, 7]


async def test_the_reader_stops_reading_past_max_queue_until_the_handler_catches_up(
    make_manager: Any,
) -> None:
    manager = make_manager(rate_limit=None)
    entered, release, handled = _blocking_handler(manager)
    async with manager, client(manager) as c:
        (conn,) = manager.connections.values()
        ws: Any = conn._ws
        await c.send({"type": "block"})
        with trio.fail_after(5):
            await entered.wait()
        for i in range(40):
            await c.send({"type": "n", "payload": {"i": i}})
        await wait_until(lambda: ws.recv_flow_control is not None)
        # Paused at the high-water mark (16): the rest waits in the kernel, not here.
        assert ws.messages_queued <= 17
        release.set()
        await wait_until(lambda: len(handled) == 41)
        assert handled == [-1, *range(40)]
        assert ws.recv_flow_control is None
        assert (await c.request({"type": "ping"}))["type"] == "pong"


def _raw_upgrade(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    return sock


def _read_close_code(sock: socket.socket) -> int | None:
    """Read until the server's close frame (after the 101 and the welcome); its code."""
    data = b""
    sock.settimeout(5)
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 101")
    data = data.split(b"\r\n\r\n", 1)[1]
    while True:
        while True:  # one whole frame in `data` (server frames are unmasked, < 64 KiB here)
            size = None
            if len(data) >= 2:
                length = data[1] & 0x7F
                head = 4 if length == 126 else 2
                if len(data) >= head:
                    if length == 126:
                        length = struct.unpack("!H", data[2:4])[0]
                    size = head + length
            if size is not None and len(data) >= size:
                break
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        opcode, payload, data = data[0] & 0x0F, data[head:size], data[size:]
        if opcode == 0x8:
            return int(struct.unpack("!H", payload[:2])[0])


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\x81\x02hi", 1002),  # an unmasked frame from a client
        (b"\x83\x80\x00\x00\x00\x00", 1002),  # a reserved opcode
        (b"\x89\xfe\x00\x80" + b"\x00" * 4 + b"x" * 128, 1002),  # a control frame > 125 bytes
    ],
)
async def test_protocol_errors_close_with_their_code_and_end_the_connection(
    make_manager: Any, frame: bytes, code: int
) -> None:
    manager = make_manager()
    disconnected = _record_disconnects(manager)

    async with manager:
        sock = await trio.to_thread.run_sync(_raw_upgrade, manager.port)
        try:
            await wait_until(lambda: len(manager.connections) == 1)
            await trio.to_thread.run_sync(sock.sendall, frame)
            assert await trio.to_thread.run_sync(_read_close_code, sock) == code
        finally:
            sock.close()
        await wait_until(lambda: disconnected == [code])
        async with client(manager) as c:
            assert (await c.request({"type": "ping"}))["type"] == "pong"


async def test_a_failing_welcome_closes_1011_and_the_disconnect_handler_runs(
    make_manager: Any,
) -> None:
    def welcome(conn: Connection) -> dict[str, Any]:
        raise RuntimeError("boom")

    manager = make_manager(welcome=welcome)
    disconnected = _record_disconnects(manager)

    async with manager:
        async with connect(manager.url, ping_interval=None) as ws:
            with trio.fail_after(5), pytest.raises(ConnectionClosed) as info:
                await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1011
        await wait_until(lambda: disconnected == [1011])


async def test_the_upgrade_response_and_the_welcome_go_out_in_one_write(
    make_manager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[bytes] = []
    send_now = DirectStream.send_now

    def counting(self: DirectStream, data: bytes) -> bool:
        writes.append(bytes(self._corked or b"") + bytes(data))
        return send_now(self, data)

    monkeypatch.setattr(DirectStream, "send_now", counting)
    manager = make_manager()
    async with manager, client(manager) as c:
        assert c.welcome is not None
        # One system call for both (it was two: ~6 % of a handshake's CPU).
        assert len(writes) == 1
        head, frame = writes[0].split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101 ") and frame and frame[0] & 0x0F == 1  # text


async def test_without_a_welcome_the_upgrade_response_still_goes_out(make_manager: Any) -> None:
    manager = make_manager(welcome=lambda conn: None)

    @manager.on_message("echo")
    async def echo(conn: Connection, msg: dict[str, Any]) -> None:
        await conn.send({"type": "echoed"})

    async with manager, connect(manager.url, ping_interval=None) as ws:  # the 101 came
        await ws.send('{"type": "echo"}')
        with trio.fail_after(5):
            assert "echoed" in await ws.recv()


async def test_a_failing_process_request_answers_500_and_ends_without_waiting_for_the_client(
    make_manager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # websockets then waits for the client to close (its reader task would see it), up to
    # close_timeout; there is no reader task here, so the handshake must not wait for one.
    manager = make_manager(close_timeout=60)

    async def broken(*args: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(manager._handshake, "process_request", broken)
    async with manager:
        idle_tasks = count_tasks()
        sock = await trio.to_thread.run_sync(_raw_upgrade, manager.port)
        try:

            def read_all() -> bytes:
                sock.settimeout(10)
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                return data

            response = await trio.to_thread.run_sync(read_all)
            assert response.startswith(b"HTTP/1.1 500 ")
            # The client keeps its socket open: the server ends the connection anyway.
            await wait_until(lambda: count_tasks() == idle_tasks, limit=10)
        finally:
            sock.close()

"""WebSocketClient under faults: a server killed with SIGKILL, a TCP connection cut or black-holed
while the server floods the client, and an app that does not read.

The defect these guard (issue 12): when the app stopped reading, websockets' Trio connection
paused its frame reader (more than 16 frames queued); a server killed then left the client
CONNECTED forever, and `aclose()` never returned (the frame reader keeps waiting on its flow
control after the stream was closed). Now the client reads the socket all the time into its own
bounded buffer, checks liveness with its own ping, and ends every connection by cancelling the
nursery that holds websockets' tasks.

Servers killed with SIGKILL are `python -m trio_rt serve tests.client.client_fault_server:build_app`
subprocesses. No assertion depends on timing: `fail_after` only guards against deadlocks.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from trio_rt import Connection, WebSocketManager
from trio_rt.client import (
    ClientEvent,
    ClientState,
    HeartbeatTimeout,
    WebSocketClient,
)

GUARD = 30.0  # seconds: deadlock protection only
# Messages a server floods a client with: far more than the socket buffers on the way hold,
# so a cut lands mid-flood; few enough for the handler to run out fast once its peer is gone.
FLOOD = 100_000
REPO_ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A trio_rt server in its own process, on a fixed port (so it can be started again)."""

    port: int
    proc: trio.Process | None = None
    lines: list[str] = field(default_factory=list)
    _line: trio.Event = field(default_factory=trio.Event)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def start(self, nursery: trio.Nursery) -> None:
        pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "trio_rt", "--log-level", "ERROR", "serve"]
        argv += ["tests.client.client_fault_server:build_app", "--port", str(self.port)]
        run = functools.partial(
            trio.run_process,
            argv,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": pythonpath},
            stdout=subprocess.PIPE,
            check=False,
        )
        self.proc = await nursery.start(run)
        nursery.start_soon(self._read_lines, self.proc)
        await self.wait_line("trio_rt listening on")

    async def _read_lines(self, proc: trio.Process) -> None:
        assert proc.stdout is not None
        buffer = b""
        async with proc.stdout:
            while chunk := await proc.stdout.receive_some():
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for line in complete:
                    self.lines.append(line.decode())
                    self._line.set()
                    self._line = trio.Event()

    async def wait_line(self, start: str) -> None:
        with trio.fail_after(GUARD):
            while not any(line.startswith(start) for line in self.lines):
                await self._line.wait()

    async def kill(self) -> None:
        """SIGKILL: no close frame, no FIN from the app; the kernel resets or closes."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        with trio.fail_after(GUARD):
            await self.proc.wait()
        self.lines.clear()


@asynccontextmanager
async def server_process() -> AsyncIterator[tuple[ServerProcess, trio.Nursery]]:
    server = ServerProcess(free_port())
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        try:
            yield server, nursery
        finally:
            if server.proc is not None and server.proc.returncode is None:
                server.proc.kill()
            nursery.cancel_scope.cancel()


@dataclass
class _Pair:
    down: trio.SocketStream
    up: trio.SocketStream
    frozen: bool = False


class Proxy:
    """A TCP proxy in front of a server: `cut()` resets the connections it carries (RST both
    ways, as a dying NAT or a pulled cable noticed by one side), `freeze()` stops forwarding
    their bytes without closing anything (a black hole). New connections always pass."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.pairs: list[_Pair] = []
        self.accepted = 0
        self._never = trio.Event()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, down: trio.SocketStream) -> None:
        self.accepted += 1
        up = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        pair = _Pair(down, up)
        self.pairs.append(pair)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, pair, down, up, nursery.cancel_scope)
                nursery.start_soon(self._pump, pair, up, down, nursery.cancel_scope)
        finally:
            self.pairs.remove(pair)
            for stream in (down, up):
                stream.socket.close()  # synchronous: a cancelled aclose would skip the second

    async def _pump(
        self,
        pair: _Pair,
        src: trio.SocketStream,
        dst: trio.SocketStream,
        both: trio.CancelScope,
    ) -> None:
        try:
            while data := await src.receive_some(65536):
                if pair.frozen:
                    await self._never.wait()
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        both.cancel()  # one side ended: end the pair

    def cut(self) -> None:
        for pair in self.pairs:
            for stream in (pair.down, pair.up):
                # SO_LINGER 0: close() sends RST, and whatever is in flight is lost.
                stream.socket.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                stream.socket.close()

    def freeze(self) -> None:
        for pair in self.pairs:
            pair.frozen = True


class Events:
    """A client's events, and a way to wait for the n-th of a type."""

    def __init__(self, client: WebSocketClient) -> None:
        self.events: list[ClientEvent] = []
        self._changed = trio.Event()
        for name in ("connected", "disconnected", "reconnecting", "closed"):
            client.add_listener(name, self._record)

    def _record(self, event: ClientEvent) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    def of(self, type: str) -> list[ClientEvent]:
        return [e for e in self.events if e.type == type]

    async def wait(self, type: str, count: int = 1) -> ClientEvent:
        with trio.fail_after(GUARD):
            while len(self.of(type)) < count:
                await self._changed.wait()
        return self.of(type)[count - 1]


def state(client: WebSocketClient) -> ClientState:
    """The client's state, read afresh (mypy would narrow `client.state` across awaits)."""
    return client.state


def fast(**options: Any) -> dict[str, Any]:
    options.setdefault("initial_delay", 0.01)
    options.setdefault("max_delay", 0.05)
    options.setdefault("ping_interval", None)
    options.setdefault("close_timeout", 2.0)
    return options


async def wait_until_received(client: WebSocketClient, count: int) -> None:
    with trio.fail_after(GUARD):
        while client.stats.received < count:  # noqa: ASYNC110 - a counter has no event
            await trio.sleep(0.01)


# ---------------------------------------------------------------------------------------------
# a server killed with SIGKILL while the app is not reading


async def test_a_killed_server_leaves_no_client_stuck_when_the_app_does_not_read() -> None:
    """The defaults: the server floods more than the receive buffer holds, the app reads
    nothing, the server is killed. The client must not stay CONNECTED (the overflow already
    dropped the connection), it reconnects to the restarted server once the app read, and
    aclose() returns (before the fix: CONNECTED forever, aclose() never returned)."""
    async with server_process() as (server, nursery):
        client = WebSocketClient(server.url, receive_buffer=10, **fast())
        events = Events(client)
        with trio.fail_after(GUARD):
            async with client:
                await client.wait_connected()
                await client.send({"type": "flood", "count": 200})
                await server.wait_line("flood over")
                await server.kill()
                await events.wait("disconnected")
                assert state(client) is ClientState.RECONNECTING
                await server.start(nursery)
                assert [(await client.receive())["n"] for _ in range(10)] == list(range(10))
                await events.wait("connected", 2)
                await client.aclose()
        assert state(client) is ClientState.CLOSED


async def test_a_killed_server_is_reconnected_while_the_app_does_not_read() -> None:
    """With drop_oldest the client stays connected while the app does not read; killing the
    server leads to a reconnect to the restarted server, the app still not reading."""
    async with server_process() as (server, nursery):
        client = WebSocketClient(
            server.url, receive_buffer=10, receive_overflow="drop_oldest", **fast()
        )
        events = Events(client)
        with trio.fail_after(GUARD):
            async with client:
                await client.wait_connected()
                await client.send({"type": "flood", "count": 200})
                await server.wait_line("flood over")
                await server.kill()
                lost = await events.wait("disconnected")
                assert lost.close_code == 1006  # no close frame from a killed process
                await server.start(nursery)
                await events.wait("connected", 2)
                assert state(client) is ClientState.CONNECTED
        assert state(client) is ClientState.CLOSED
        assert client.stats.receive_dropped > 0


async def test_a_killed_server_is_reconnected_while_backpressure_pauses_reading() -> None:
    """receive_overflow="wait": the client stops reading while the app does not read (as the
    client did before the fix, always). Now its heartbeat still drops the connection of the
    killed server (the pong cannot come), and the client reconnects."""
    async with server_process() as (server, nursery):
        client = WebSocketClient(
            server.url,
            receive_buffer=10,
            receive_overflow="wait",
            **fast(ping_interval=0.2, ping_timeout=0.5),
        )
        events = Events(client)
        with trio.fail_after(GUARD):
            async with client:
                await client.wait_connected()
                await client.send({"type": "flood", "count": 200})
                await server.wait_line("flood over")
                await server.kill()
                lost = await events.wait("disconnected")
                assert isinstance(lost.error, HeartbeatTimeout)
                await server.start(nursery)
                await events.wait("connected", 2)
                # Nothing the client received was dropped: the first 10, in order.
                assert [(await client.receive())["n"] for _ in range(10)] == list(range(10))
        assert state(client) is ClientState.CLOSED


async def test_aclose_returns_after_the_server_was_killed_while_the_app_does_not_read() -> None:
    """Before the fix, with keepalive on, aclose() waited forever for websockets' frame reader
    (paused on its flow control, its resume callback gone with the closed stream)."""
    async with server_process() as (server, _):
        client = WebSocketClient(
            server.url,
            receive_buffer=10,
            receive_overflow="drop_oldest",
            **fast(ping_interval=0.2, ping_timeout=0.2, close_timeout=1.0),
        )
        with trio.fail_after(GUARD):
            async with client:
                await client.wait_connected()
                await client.send({"type": "flood", "count": 200})
                await server.wait_line("flood over")
                await server.kill()
                # Let a few ping rounds find the server dead first (before the fix: websockets'
                # keepalive, which then closed the stream under its paused frame reader). Not
                # a timing assertion: whatever those rounds did, aclose() must return.
                await trio.sleep(1.0)
                await client.aclose()
        assert state(client) is ClientState.CLOSED


# ---------------------------------------------------------------------------------------------
# a TCP connection cut or black-holed while the server floods the client


def flooding_manager() -> WebSocketManager:
    manager = WebSocketManager(host="127.0.0.1", port=0, heartbeat_interval=None)

    @manager.on_message("flood")
    async def flood(conn: Connection, message: dict[str, Any]) -> None:
        for n in range(int(message["count"])):
            await conn.send({"type": "flood", "n": n})

    return manager


@asynccontextmanager
async def proxied_server() -> AsyncIterator[Proxy]:
    manager = flooding_manager()
    async with manager, trio.open_nursery() as nursery:
        proxy = Proxy(manager.port)
        await nursery.start(proxy.run)
        yield proxy
        nursery.cancel_scope.cancel()


async def test_a_connection_cut_mid_flood_reconnects_while_the_app_does_not_read() -> None:
    async with proxied_server() as proxy:
        client = WebSocketClient(
            proxy.url, receive_buffer=10, receive_overflow="drop_oldest", **fast()
        )
        events = Events(client)
        with trio.fail_after(GUARD):
            async with client:
                await client.wait_connected()
                await client.send({"type": "flood", "count": FLOOD})
                await wait_until_received(client, 1000)
                proxy.cut()
                await events.wait("disconnected")
                assert client.stats.received < FLOOD  # it was cut mid-flood
                await events.wait("connected", 2)
                assert proxy.accepted == 2
        assert state(client) is ClientState.CLOSED


async def test_a_connection_reset_while_reading_waits_for_the_app_ends_at_the_next_write() -> None:
    """receive_overflow="wait" and the reader waits for the app, so it does not see the
    reset; the writer does, and ends the connection (the heartbeat is far away here)."""
    async with proxied_server() as proxy:
        client = WebSocketClient(
            proxy.url,
            receive_buffer=10,
            receive_overflow="wait",
            **fast(ping_interval=3 * GUARD, ping_timeout=3 * GUARD),
        )
        events = Events(client)
        with trio.fail_after(GUARD):
            async with client:
                await client.wait_connected()
                await client.send({"type": "flood", "count": FLOOD})
                await wait_until_received(client, 11)  # the buffer is full: reading waits
                proxy.cut()
                await client.send({"type": "anything"})
                await events.wait("disconnected")
                await events.wait("connected", 2)
        assert state(client) is ClientState.CLOSED


async def test_a_black_holed_connection_is_dropped_by_the_heartbeat() -> None:
    """Nothing arrives and nothing closes: only the client's own ping can tell. The app's
    writes fill the socket, so websockets' send lock is held by a write that never ends
    (websockets' own keepalive waited behind it forever)."""
    async with proxied_server() as proxy:
        client = WebSocketClient(
            proxy.url, **fast(ping_interval=0.2, ping_timeout=0.5, queue_size=100)
        )
        events = Events(client)
        with trio.fail_after(GUARD):
            async with client:
                await client.wait_connected()
                proxy.freeze()
                big = "x" * 1_000_000
                for _ in range(32):  # more than every socket buffer on the way holds
                    await client.send({"type": "blob", "data": big})
                lost = await events.wait("disconnected")
                assert isinstance(lost.error, HeartbeatTimeout)
                assert client.stats.heartbeat_timeouts == 1
                await events.wait("connected", 2)
        assert state(client) is ClientState.CLOSED


async def test_a_black_holed_connection_does_not_stall_aclose() -> None:
    """aclose() while the socket is full and the peer silent: the flush and the closing
    handshake each wait close_timeout at most, then the TCP connection is dropped. (A guard
    of the bound: the client before the fix happened to get out of this one too.)"""
    async with proxied_server() as proxy:
        client = WebSocketClient(proxy.url, **fast(close_timeout=0.2, queue_size=100))
        with trio.fail_after(GUARD):
            async with client:
                await client.wait_connected()
                proxy.freeze()
                big = "x" * 1_000_000
                for _ in range(32):
                    await client.send({"type": "blob", "data": big})
        assert state(client) is ClientState.CLOSED

"""trio_rt.client.WebSocketClient: its options and queue policies without sockets, then
integration tests against the real WebSocketManager, including a server stopped and restarted
mid-stream. The sans-IO parts (backoff, error classification, the duplicate rule, the core's
bookkeeping) have their unit tests in tests/client/.

No assertion depends on timing: waits are on events or state, and `fail_after` only guards
against deadlocks.
"""

from __future__ import annotations

import functools
import itertools
import json
import random
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
from websockets.trio.server import serve as ws_serve

from trio_rt import (
    Connection,
    MemoryStreamStore,
    Reject,
    RoomHistory,
    StreamEntry,
    WebSocketManager,
)
from trio_rt.client import (
    ClientClosed,
    ClientError,
    ClientEvent,
    ClientState,
    ConnectInfo,
    ProtocolViolation,
    QueueFull,
    ReceiveOverflow,
    ServerError,
    WebSocketClient,
)

GUARD = 20.0  # seconds: deadlock protection only


# ---------------------------------------------------------------------------------------------
# helpers


@dataclass
class Server:
    manager: WebSocketManager
    url: str
    port: int
    scope: trio.CancelScope
    stopped: trio.Event

    async def settle_and_stop(self) -> None:
        # Let the server finish its disconnect cleanup first: stopping a WebSocketManager in
        # the instant between a connection's end and its cleanup hangs (server bug, reported).
        await wait_until(lambda: not self.manager.connections)
        await self.stop()

    async def stop(self) -> None:
        """Cancel `serve` (graceful shutdown: clients get 1001) and wait until it is over."""
        self.scope.cancel()
        with trio.fail_after(GUARD):
            await self.stopped.wait()


async def start_server(nursery: trio.Nursery, manager: WebSocketManager) -> Server:
    stopped = trio.Event()

    async def run(*, task_status: trio.TaskStatus[tuple[trio.CancelScope, int]]) -> None:
        try:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as inner:
                    _, port = await inner.start(manager.serve)
                    task_status.started((scope, port))
        finally:
            stopped.set()

    scope, port = await nursery.start(run)
    return Server(manager, f"ws://127.0.0.1:{port}/", port, scope, stopped)


StartServer = Callable[[WebSocketManager], Awaitable[Server]]


@pytest.fixture
async def serve(nursery: trio.Nursery) -> AsyncIterator[StartServer]:
    """`server = await serve(manager)`; servers still running are stopped after the test."""
    started: list[Server] = []

    async def start(manager: WebSocketManager) -> Server:
        server = await start_server(nursery, manager)
        started.append(server)
        return server

    yield start
    for server in started:
        if not server.stopped.is_set():
            await server.settle_and_stop()


def make_manager(port: int = 0, **options: Any) -> WebSocketManager:
    return WebSocketManager(host="127.0.0.1", port=port, heartbeat_interval=None, **options)


def add_echo(manager: WebSocketManager) -> None:
    @manager.on_message("echo")
    async def echo(conn: Connection, message: dict[str, Any]) -> None:
        await conn.send({"type": "echo", "data": message.get("data")})


def add_recorder(manager: WebSocketManager, into: list[int]) -> None:
    @manager.on_message("seq")
    async def seq(conn: Connection, message: dict[str, Any]) -> None:
        into.append(message["n"])


def add_closer(manager: WebSocketManager) -> None:
    """`{"type": "close_me", "code": c}` makes the server close the connection with code c."""

    @manager.on_message("close_me")
    async def close_me(conn: Connection, message: dict[str, Any]) -> None:
        await conn.close(message["code"], "asked by the test")


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll until true (the client and server expose state, not events, for these checks)."""
    with trio.fail_after(GUARD):
        while not predicate():  # noqa: ASYNC110 - polling state that has no event
            await trio.sleep(0.005)


class EventLog:
    """Records a client's events through its listeners."""

    def __init__(self, client: WebSocketClient) -> None:
        self.events: list[ClientEvent] = []
        for name in ("connected", "disconnected", "reconnecting", "rejoin_failed", "closed"):
            client.add_listener(name, self.events.append)

    @property
    def types(self) -> list[str]:
        return [e.type for e in self.events]

    def count(self, type: str) -> int:
        return self.types.count(type)


def logged(url: str, **options: Any) -> tuple[WebSocketClient, EventLog]:
    """A client whose events are all recorded (listeners registered before it starts)."""
    client = WebSocketClient(url, **options)
    return client, EventLog(client)


def fast(**options: Any) -> dict[str, Any]:
    """Client options for tests: quick reconnects, no keepalive."""
    options.setdefault("initial_delay", 0.01)
    options.setdefault("max_delay", 0.05)
    options.setdefault("ping_interval", None)
    options.setdefault("rng", random.Random(0))
    return options


async def never_connect() -> dict[str, str]:
    """A headers provider that never returns: the client stays CONNECTING without any socket."""
    await trio.sleep_forever()
    raise AssertionError("unreachable")


@contextmanager
def refused_url() -> Iterator[str]:
    """A ws:// URL where connections are refused: the port is bound but not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}/"


def tasks_of_this_test() -> int:
    """Tasks under the test's own task (servers run in the `nursery` fixture's task)."""
    total = 0
    stack = list(trio.lowlevel.current_task().child_nurseries)
    while stack:
        nursery = stack.pop()
        for task in nursery.child_tasks:
            total += 1
            stack.extend(task.child_nurseries)
    return total


# ---------------------------------------------------------------------------------------------
# options (the sans-IO parts are tested in tests/client/)


def test_client_validates_its_options() -> None:
    with pytest.raises(ValueError):
        WebSocketClient("ws://127.0.0.1:1/", max_attempts=0)
    with pytest.raises(ValueError):
        WebSocketClient("ws://127.0.0.1:1/", queue_size=0)
    with pytest.raises(ValueError):
        WebSocketClient("ws://127.0.0.1:1/", overflow="ignore")  # type: ignore[arg-type]
    with pytest.raises(InvalidURI):
        WebSocketClient("http://127.0.0.1:1/")
    with pytest.raises(ValueError):
        WebSocketClient("ws://127.0.0.1:1/", ssl=ssl.create_default_context())
    with pytest.raises(ValueError):
        WebSocketClient("ws://127.0.0.1:1/", initial_delay=5, max_delay=1)
    with pytest.raises(ValueError):
        WebSocketClient("ws://127.0.0.1:1/", receive_buffer=0)
    with pytest.raises(ValueError):
        WebSocketClient("ws://127.0.0.1:1/", receive_overflow="pause")  # type: ignore[arg-type]
    with pytest.raises(ValueError):  # "wait" stops reading: only the heartbeat can tell
        WebSocketClient("ws://127.0.0.1:1/", receive_overflow="wait", ping_interval=None)
    with pytest.raises(ValueError):
        WebSocketClient("ws://127.0.0.1:1/", receive_overflow="wait", ping_timeout=None)
    with pytest.raises(ValueError):
        WebSocketClient("ws://127.0.0.1:1/", ping_interval=0)
    with pytest.raises(ValueError):
        WebSocketClient("ws://127.0.0.1:1/", ping_timeout=-1)


# ---------------------------------------------------------------------------------------------
# queue policies, without sockets (the headers provider never returns: the client stays
# CONNECTING)


async def test_queue_full_raises_by_default() -> None:
    async with WebSocketClient("ws://127.0.0.1:9/", headers=never_connect, queue_size=3) as client:
        for n in range(3):
            await client.send({"type": "seq", "n": n})
        with pytest.raises(QueueFull):
            await client.send({"type": "seq", "n": 3})
        assert client.pending == 3
        assert client.state is ClientState.CONNECTING
    assert client.state is ClientState.CLOSED
    assert client.stats.discarded == 3
    with pytest.raises(ClientClosed) as info:
        await client.send({"type": "seq", "n": 4})
    assert info.value.error is None


async def test_queue_drop_oldest_keeps_the_newest() -> None:
    async with WebSocketClient(
        "ws://127.0.0.1:9/", headers=never_connect, queue_size=3, overflow="drop_oldest"
    ) as client:
        for n in range(5):
            await client.send({"type": "seq", "n": n})
        assert client.pending == 3
        assert client.stats.dropped == 2


async def test_queue_wait_blocks_until_room_or_close() -> None:
    outcome: list[BaseException] = []
    async with WebSocketClient(
        "ws://127.0.0.1:9/", headers=never_connect, queue_size=1, overflow="wait"
    ) as client:
        await client.send({"type": "seq", "n": 0})

        async def blocked_sender() -> None:
            try:
                await client.send({"type": "seq", "n": 1})
            except ClientClosed as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked_sender)
            await trio.testing.wait_all_tasks_blocked()
            assert outcome == [] and client.pending == 1
            await client.aclose()
    assert len(outcome) == 1 and isinstance(outcome[0], ClientClosed)


async def test_send_validates_messages_at_the_call_site() -> None:
    async with WebSocketClient("ws://127.0.0.1:9/", headers=never_connect) as client:
        with pytest.raises(TypeError):
            await client.send(["not", "a", "mapping"])  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await client.send({"no": "type"})
        with pytest.raises(TypeError):
            await client.send({"type": "x", "data": object()})
        assert client.pending == 0


async def test_pending_join_and_wait_connected_fail_when_the_client_closes() -> None:
    errors: list[BaseException] = []
    async with WebSocketClient("ws://127.0.0.1:9/", headers=never_connect) as client:

        async def join() -> None:
            try:
                await client.join_room("r")
            except ClientClosed as exc:
                errors.append(exc)

        async def connected() -> None:
            try:
                await client.wait_connected()
            except ClientClosed as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(join)
            nursery.start_soon(connected)
            await trio.testing.wait_all_tasks_blocked()
            assert client.rooms == {"r"}
            await client.aclose()
    assert len(errors) == 2
    assert client.rooms == frozenset()


# ---------------------------------------------------------------------------------------------
# integration with the real server


async def test_connect_send_receive(serve: StartServer) -> None:
    manager = make_manager()
    add_echo(manager)
    server = await serve(manager)
    with trio.fail_after(GUARD):
        client, log = logged(server.url, **fast())
        async with client:
            await client.wait_connected()
            assert client.state is ClientState.CONNECTED
            assert client.welcome is not None and client.welcome["type"] == "welcome"
            assert client.connection_id in manager.connections

            await client.send({"type": "echo", "data": {"hello": "world"}})
            assert await client.receive() == {"type": "echo", "data": {"hello": "world"}}

            await client.join_room("chat:general")
            assert client.rooms == {"chat:general"}
            assert {c.id for c in manager.members_of("chat:general")} == {client.connection_id}
            await manager.broadcast_to_room("chat:general", {"type": "news", "n": 1})
            await client.send({"type": "ping"})
            # In order; the welcome and the room_joined reply are not delivered.
            assert await client.receive() == {"type": "news", "n": 1}
            assert await client.receive() == {"type": "pong"}

            await client.leave_room("chat:general")
            assert client.rooms == frozenset()
            assert manager.members_of("chat:general") == frozenset()
        assert log.types == ["connected", "disconnected", "closed"]
        assert log.events[1].close_code == 1000
        assert log.events[1].error is None


async def test_join_room_raises_on_room_full(serve: StartServer) -> None:
    manager = make_manager()
    server = await serve(manager)
    await manager.create_room("tiny", max_users=1, persistent=True)
    with trio.fail_after(GUARD):
        async with (
            WebSocketClient(server.url, **fast()) as first,
            WebSocketClient(server.url, **fast()) as second,
        ):
            await first.join_room("tiny")
            await first.join_room("tiny")  # idempotent
            with pytest.raises(ServerError) as info:
                await second.join_room("tiny")
            assert info.value.code == "room_full"
            assert info.value.room == "tiny"
            assert second.rooms == frozenset()
            with pytest.raises(ServerError) as invalid:
                await second.join_room("has space")
            assert invalid.value.code == "invalid_field"
            # The error replies were consumed by join_room, not delivered.
            await second.send({"type": "ping"})
            assert await second.receive() == {"type": "pong"}


async def test_server_restart_mid_stream(serve: StartServer) -> None:
    """The acceptance test: the server is stopped and started again on the same port while the
    client keeps sending. Messages sent while down arrive after the reconnect, in order; rooms
    are joined again; events come in order."""
    received_a: list[int] = []
    received_b: list[int] = []
    manager_a = make_manager()
    add_recorder(manager_a, received_a)
    server_a = await serve(manager_a)

    sent_while_down: list[int] = []
    enough_down = trio.Event()
    with trio.fail_after(GUARD):
        client, log = logged(server_a.url, **fast())
        async with client:
            await client.join_room("room:a")
            await client.join_room("room:b")
            first_id = client.connection_id

            async def sender(*, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
                with trio.CancelScope() as scope:
                    task_status.started(scope)
                    for n in itertools.count():
                        down = client.state is not ClientState.CONNECTED
                        await client.send({"type": "seq", "n": n})
                        if down:
                            sent_while_down.append(n)
                            if len(sent_while_down) == 20:
                                enough_down.set()
                        await trio.sleep(0.002)

            async with trio.open_nursery() as senders:
                sending = await senders.start(sender)
                await wait_until(lambda: len(received_a) >= 20)

                await server_a.stop()
                await wait_until(lambda: log.count("disconnected") == 1)
                await enough_down.wait()  # the client keeps sending while the server is down

                manager_b = make_manager(port=server_a.port)
                add_recorder(manager_b, received_b)
                server_b = await serve(manager_b)
                await wait_until(lambda: log.count("connected") == 2)
                # Rooms were rejoined before "connected" fired.
                assert client.rooms == {"room:a", "room:b"}
                assert client.connection_id != first_id
                for room in ("room:a", "room:b"):
                    members = manager_b.members_of(room)
                    assert {c.id for c in members} == {client.connection_id}

                # Messages keep flowing after the reconnect too.
                last_down = sent_while_down[-1]
                await wait_until(lambda: bool(received_b) and received_b[-1] > last_down + 5)
                sending.cancel()

            await manager_b.broadcast_to_room("room:b", {"type": "after_restart"})
            with trio.fail_after(GUARD):
                async for message in client:
                    if message["type"] == "after_restart":
                        break

    # At most once, in order: no duplicate, no reordering, across both servers.
    everything = received_a + received_b
    assert everything == sorted(set(everything))
    # Every message sent while the server was down was delivered after the reconnect.
    assert set(sent_while_down) <= set(received_b)
    # Events in order: connected, disconnected (1001: going away), reconnecting..., connected.
    types = log.types
    assert types[:2] == ["connected", "disconnected"]
    assert log.events[1].close_code == 1001
    reconnecting = log.events[2 : types.index("connected", 1)]
    assert reconnecting and all(e.type == "reconnecting" for e in reconnecting)
    assert [e.attempt for e in reconnecting] == list(range(1, len(reconnecting) + 1))
    assert all(0 < e.delay <= 0.05 for e in reconnecting)
    assert types[len(reconnecting) + 2 :] == ["connected", "disconnected", "closed"]
    assert log.events[len(reconnecting) + 2].attempt == 2
    await server_b.settle_and_stop()


async def test_max_attempts_exhausted_ends_iteration_with_client_closed(
    serve: StartServer,
) -> None:
    manager = make_manager()
    server = await serve(manager)
    with trio.fail_after(GUARD):
        client, log = logged(server.url, **fast(max_attempts=3))
        async with client:
            await client.wait_connected()
            await server.stop()  # and never comes back
            with pytest.raises(ClientClosed) as info:
                async for _ in client:
                    pass
            assert isinstance(info.value.error, OSError)  # connection refused
            assert info.value.__cause__ is info.value.error
            assert client.state is ClientState.CLOSED
            with pytest.raises(ClientClosed):
                await client.send({"type": "seq", "n": 0})
            with pytest.raises(ClientClosed):
                await client.wait_connected()
    assert log.types == ["connected", "disconnected"] + ["reconnecting"] * 3 + ["closed"]
    assert [e.attempt for e in log.events[2:5]] == [1, 2, 3]
    assert client.stats.failed_attempts == 3
    assert log.events[-1].error is info.value.error


async def test_first_connection_failures_count_against_max_attempts() -> None:
    with trio.fail_after(GUARD), refused_url() as url:
        client, log = logged(url, **fast(max_attempts=2))
        async with client:
            with pytest.raises(ClientClosed) as info:
                await client.wait_connected()
    assert isinstance(info.value.error, OSError)
    assert log.types == ["reconnecting", "closed"]
    assert log.events[0].attempt == 2


async def test_fatal_close_code_does_not_reconnect(serve: StartServer) -> None:
    manager = make_manager()
    add_closer(manager)
    server = await serve(manager)
    with trio.fail_after(GUARD):
        client, log = logged(server.url, **fast())
        async with client:
            await client.join_room("r")
            await client.send({"type": "close_me", "code": 4003})
            with pytest.raises(ClientClosed) as info:
                async for _ in client:
                    pass
    assert info.value.close_code == 4003
    assert isinstance(info.value.error, ConnectionClosed)
    assert log.types == ["connected", "disconnected", "closed"]
    assert log.events[1].close_code == 4003
    assert manager.stats.connections_opened == 1


async def test_http_401_is_fatal_and_headers_are_sent(serve: StartServer) -> None:
    manager = make_manager()

    @manager.on_connection
    async def authenticate(conn: Connection) -> None:
        if conn.request.headers.get("authorization") != "Bearer good":
            raise Reject(401, "unauthorized")

    server = await serve(manager)
    with trio.fail_after(GUARD):
        async with WebSocketClient(server.url, **fast()) as anonymous:
            with pytest.raises(ClientClosed) as info:
                await anonymous.wait_connected()
        assert info.value.http_status == 401
        assert anonymous.stats.failed_attempts == 1

        async with WebSocketClient(
            server.url, headers={"Authorization": "Bearer good"}, **fast()
        ) as client:
            await client.wait_connected()


async def test_http_503_server_full_is_retried(serve: StartServer) -> None:
    manager = make_manager(max_connections=1)
    server = await serve(manager)
    with trio.fail_after(GUARD):
        async with WebSocketClient(server.url, **fast()) as occupant:
            await occupant.wait_connected()
            waiting, log = logged(server.url, **fast())
            async with waiting:
                await wait_until(lambda: log.count("reconnecting") >= 2)
                error = log.events[0].error
                assert isinstance(error, InvalidStatus)
                assert error.response.status_code == 503
                # Retry-After: 5 lengthens the delay, but never beyond max_delay.
                assert all(e.delay == 0.05 for e in log.events)
                await occupant.aclose()
                await waiting.wait_connected()
                assert waiting.state is ClientState.CONNECTED


async def test_protocol_violation_is_fatal(serve: StartServer) -> None:
    manager = WebSocketManager(
        host="127.0.0.1", port=0, heartbeat_interval=None, welcome=lambda conn: {"type": "hi"}
    )
    server = await serve(manager)
    with trio.fail_after(GUARD):
        async with WebSocketClient(server.url, **fast()) as client:
            with pytest.raises(ClientClosed) as info:
                await client.wait_connected()
    assert isinstance(info.value.error, ProtocolViolation)
    assert manager.stats.connections_opened == 1


async def test_headers_provider_and_on_connect_hook_run_on_every_connect(
    serve: StartServer,
) -> None:
    manager = make_manager()
    add_closer(manager)
    tokens: list[str] = []
    resumed: list[tuple[int, frozenset[str]]] = []

    @manager.on_connection
    async def authenticate(conn: Connection) -> None:
        tokens.append(conn.request.headers["authorization"])

    @manager.on_message("resume")
    async def resume(conn: Connection, message: dict[str, Any]) -> None:
        # Sent by the hook after the rejoins: the rooms are already joined when it arrives.
        resumed.append((message["connection"], manager.rooms_of(conn)))

    counter = itertools.count(1)

    async def headers() -> dict[str, str]:
        await trio.lowlevel.checkpoint()
        return {"Authorization": f"Bearer t{next(counter)}"}

    infos: list[ConnectInfo] = []

    def on_connect(info: ConnectInfo) -> list[dict[str, Any]]:
        infos.append(info)
        return [{"type": "resume", "connection": info.connection_number}]

    server = await serve(manager)
    with trio.fail_after(GUARD):
        client, log = logged(server.url, headers=headers, on_connect=on_connect, **fast())
        async with client:
            await client.join_room("r")  # called while connecting: part of the first restore
            await client.join_room("later")  # called while connected: sent by the writer
            await client.send({"type": "close_me", "code": 4000})  # slow consumer: reconnect
            await wait_until(lambda: log.count("connected") == 2)
            await wait_until(lambda: len(resumed) == 2)
    assert tokens == ["Bearer t1", "Bearer t2"]
    assert [(i.connection_number, i.rooms) for i in infos] == [(1, ("r",)), (2, ("r", "later"))]
    assert infos[0].welcome["type"] == "welcome"
    assert resumed == [(1, frozenset({"r"})), (2, frozenset({"r", "later"}))]
    assert log.types[:4] == ["connected", "disconnected", "reconnecting", "connected"]
    assert log.events[1].close_code == 4000


async def test_kicked_room_is_forgotten_and_not_rejoined(serve: StartServer) -> None:
    manager = make_manager()
    add_closer(manager)

    @manager.on_connection
    async def identify(conn: Connection) -> None:
        conn.user_id = "alice"

    server = await serve(manager)
    with trio.fail_after(GUARD):
        client, log = logged(server.url, **fast())
        async with client:
            await client.join_room("stays")
            await client.join_room("kicked")
            await manager.kick("kicked", "alice", by="mod")
            message = await client.receive()
            assert message["type"] == "room_kicked" and message["room"] == "kicked"
            assert client.rooms == {"stays"}

            await client.send({"type": "close_me", "code": 4001})
            await wait_until(lambda: log.count("connected") == 2)
            assert {c.id for c in manager.members_of("stays")} == {client.connection_id}
            assert manager.members_of("kicked") == frozenset()


async def test_rejoin_refused_after_reconnect_fires_rejoin_failed(serve: StartServer) -> None:
    manager = make_manager()
    add_closer(manager)
    server = await serve(manager)
    await manager.create_room("tiny", max_users=1, persistent=True)
    client, log = logged(server.url, **fast())
    with trio.fail_after(GUARD):
        async with WebSocketClient(server.url, **fast()) as other, client:
            await client.join_room("tiny")
            await client.join_room("big")

            @client.on("reconnecting")
            async def take_the_seat(event: ClientEvent) -> None:
                # Listeners are awaited before the reconnect: deterministic ordering.
                if "tiny" not in other.rooms:
                    await other.join_room("tiny")

            await client.send({"type": "close_me", "code": 4000})
            await wait_until(lambda: log.count("connected") == 2)
            assert log.types == [
                "connected",
                "disconnected",
                "reconnecting",
                "rejoin_failed",
                "connected",
            ]
            failed = log.events[3]
            assert failed.room == "tiny"
            assert isinstance(failed.error, ServerError) and failed.error.code == "room_full"
            assert client.rooms == {"big"}


async def test_messages_queued_while_connecting_are_sent_in_order(serve: StartServer) -> None:
    manager = make_manager()
    received: list[int] = []
    add_recorder(manager, received)
    server = await serve(manager)
    release = trio.Event()

    async def headers() -> dict[str, str]:
        await release.wait()
        return {}

    with trio.fail_after(GUARD):
        async with WebSocketClient(
            server.url, headers=headers, queue_size=5, overflow="drop_oldest", **fast()
        ) as client:
            for n in range(8):
                await client.send({"type": "seq", "n": n})
            assert client.pending == 5 and client.stats.dropped == 3
            release.set()
            await client.flush()
            assert client.pending == 0
            await wait_until(lambda: len(received) == 5)
    assert received == [3, 4, 5, 6, 7]
    assert client.stats.sent == 5


async def test_exit_flushes_the_outbox_and_closes_with_1000(serve: StartServer) -> None:
    manager = make_manager(rate_limit=None)  # 300 messages at once: above the default limit
    received: list[int] = []
    add_recorder(manager, received)
    codes: list[int] = []

    @manager.on_disconnect
    async def gone(conn: Connection, code: int) -> None:
        codes.append(code)

    server = await serve(manager)
    with trio.fail_after(GUARD):
        async with WebSocketClient(server.url, **fast()) as client:
            await client.wait_connected()
            for n in range(300):
                await client.send({"type": "seq", "n": n})
        await wait_until(lambda: codes == [1000])
        await wait_until(lambda: len(received) == 300)
    assert received == list(range(300))


async def test_exit_leaves_no_task_running(serve: StartServer) -> None:
    manager = make_manager()
    codes: list[int] = []

    @manager.on_disconnect
    async def gone(conn: Connection, code: int) -> None:
        codes.append(code)

    server = await serve(manager)
    assert tasks_of_this_test() == 0
    with trio.fail_after(GUARD):
        # Normal exit: graceful close.
        async with WebSocketClient(server.url, **fast()) as client:
            await client.wait_connected()
            await client.join_room("r")
            assert tasks_of_this_test() > 0
        assert tasks_of_this_test() == 0
        assert client.state is ClientState.CLOSED
        await wait_until(lambda: codes == [1000])

        # Exit with an exception: background tasks are cancelled, the exception is unchanged.
        with pytest.raises(KeyError):
            async with WebSocketClient(server.url, **fast()) as client:
                await client.wait_connected()
                raise KeyError("app error")
        assert tasks_of_this_test() == 0
        await wait_until(lambda: len(codes) == 2)
        assert codes == [1000, 1006]  # dropped, no closing handshake
        assert manager.connections == {}

        # Cancelled from outside while reconnecting to nothing.
        with refused_url() as url, trio.move_on_after(0.1):
            async with WebSocketClient(url, **fast()) as client:
                await trio.sleep_forever()
        assert tasks_of_this_test() == 0


async def test_listener_exception_propagates_out_of_the_block(serve: StartServer) -> None:
    manager = make_manager()
    server = await serve(manager)
    with trio.fail_after(GUARD), pytest.raises(RuntimeError, match="listener bug"):
        async with WebSocketClient(server.url, **fast()) as client:

            @client.on("connected")
            def broken(event: ClientEvent) -> None:
                raise RuntimeError("listener bug")

            await trio.sleep_forever()
    assert client.state is ClientState.CLOSED


async def test_aclose_from_another_task_ends_iteration(serve: StartServer) -> None:
    manager = make_manager()
    add_echo(manager)
    server = await serve(manager)
    seen: list[dict[str, Any]] = []
    with trio.fail_after(GUARD):
        async with WebSocketClient(server.url, **fast()) as client:
            await client.send({"type": "echo", "data": 1})

            async def reader() -> None:
                async for message in client:
                    seen.append(message)
                    await client.aclose()  # idempotent; iteration then ends normally

            async with trio.open_nursery() as readers:
                readers.start_soon(reader)
            with pytest.raises(ClientClosed) as info:
                await client.receive()
            assert info.value.error is None
            await client.aclose()
    assert seen == [{"type": "echo", "data": 1}]


async def test_leave_room_while_disconnected_returns_at_once(serve: StartServer) -> None:
    manager = make_manager()
    server = await serve(manager)
    with trio.fail_after(GUARD):
        client, log = logged(server.url, **fast(initial_delay=60, max_delay=60))
        async with client:
            await client.join_room("r")
            await server.stop()
            await wait_until(lambda: log.count("reconnecting") == 1)  # now waiting 30-60 s
            await client.leave_room("r")
            assert client.rooms == frozenset()


def add_flooder(manager: WebSocketManager) -> None:
    @manager.on_message("flood")
    async def flood(conn: Connection, message: dict[str, Any]) -> None:
        for n in range(message["count"]):
            await conn.send({"type": "flood", "n": n})


async def test_receive_overflow_reconnects_and_recovers_a_room_with_history(
    serve: StartServer,
) -> None:
    """The default policy: the app falls receive_buffer behind, the client keeps what it got,
    drops the connection, reconnects once the app read half, and the room's history replays
    what was said meanwhile: every message once, in order."""
    manager = make_manager(history=RoomHistory())
    server = await serve(manager)
    with trio.fail_after(GUARD):
        client, log = logged(server.url, receive_buffer=10, **fast())
        async with client:
            await client.join_room("r")
            for n in range(100):  # the app reads nothing meanwhile
                await manager.broadcast_to_room("r", {"type": "m", "n": n})
            await wait_until(lambda: log.count("disconnected") == 1)
            assert isinstance(log.events[1].error, ReceiveOverflow)
            assert client.state is ClientState.RECONNECTING  # until the app reads
            got = [(await client.receive())["n"] for _ in range(100)]
            assert got == list(range(100))
            assert client.stats.overflows >= 1 and client.stats.duplicates == 0
            assert client.stats.failed_attempts == 0


async def test_receive_overflow_wait_applies_backpressure_and_drops_nothing(
    serve: StartServer,
) -> None:
    manager = make_manager()
    add_flooder(manager)
    server = await serve(manager)
    with trio.fail_after(GUARD):
        client, log = logged(
            server.url, receive_buffer=1, receive_overflow="wait", **fast(ping_interval=10.0)
        )
        async with client:
            await client.send({"type": "flood", "count": 500})
            got = [(await client.receive())["n"] for _ in range(500)]
    assert got == list(range(500))
    assert log.types == ["connected", "disconnected", "closed"]  # one connection


async def test_receive_overflow_drop_oldest_stays_connected(serve: StartServer) -> None:
    manager = make_manager()
    add_flooder(manager)
    add_echo(manager)
    server = await serve(manager)
    with trio.fail_after(GUARD):
        client, log = logged(server.url, receive_buffer=5, receive_overflow="drop_oldest", **fast())
        async with client:
            await client.send({"type": "flood", "count": 50})
            await client.send({"type": "echo", "data": "end"})
            await wait_until(lambda: client.stats.received >= 52)  # welcome, 50, echo
            got = [await client.receive() for _ in range(5)]
            assert [m.get("n") for m in got[:4]] == [46, 47, 48, 49]
            assert got[4] == {"type": "echo", "data": "end"}
            assert client.stats.receive_dropped == 46
        assert log.types == ["connected", "disconnected", "closed"]  # one connection


async def test_exit_is_prompt_when_the_app_stopped_reading(serve: StartServer) -> None:
    """Unread messages must not stall the closing handshake (they are read and dropped)."""
    manager = make_manager()
    add_flooder(manager)
    codes: list[int] = []

    @manager.on_disconnect
    async def gone(conn: Connection, code: int) -> None:
        codes.append(code)

    server = await serve(manager)
    # close_timeout is far above the guard: a stalled closing handshake fails the test.
    with trio.fail_after(GUARD):
        async with WebSocketClient(
            server.url,
            receive_buffer=1,
            receive_overflow="drop_oldest",
            close_timeout=3 * GUARD,
            **fast(),
        ) as client:
            await client.send({"type": "flood", "count": 300})
            await wait_until(lambda: manager.stats.messages_out >= 300)
            assert (await client.receive())["type"] == "flood"
        await wait_until(lambda: codes == [1000])


# ---------------------------------------------------------------------------------------------
# several URLs: round-robin over the servers of a deployment


def test_several_urls_validation_and_start_index() -> None:
    urls = ["ws://127.0.0.1:1/", "ws://127.0.0.1:2/", "ws://127.0.0.1:3/"]
    client = WebSocketClient(urls, url_index=2)
    assert client.urls == tuple(urls)
    assert client.url == urls[2]
    assert WebSocketClient("ws://127.0.0.1:1/").urls == ("ws://127.0.0.1:1/",)
    # without url_index, the first URL is drawn with the client's rng (reproducible)
    starts = {WebSocketClient(urls, rng=random.Random(seed)).url for seed in range(20)}
    assert starts == set(urls)
    assert WebSocketClient(urls, rng=random.Random(7)).url == (
        WebSocketClient(urls, rng=random.Random(7)).url
    )
    with pytest.raises(ValueError):
        WebSocketClient([])
    with pytest.raises(ValueError):
        WebSocketClient(urls, url_index=3)
    with pytest.raises(ValueError):
        WebSocketClient(urls, url_index=-1)
    with pytest.raises(ValueError):
        WebSocketClient("ws://127.0.0.1:1/", url_index=1)
    with pytest.raises(InvalidURI):
        WebSocketClient(["ws://127.0.0.1:1/", "http://127.0.0.1:2/"])
    with pytest.raises(TypeError):
        WebSocketClient(["ws://127.0.0.1:1/", 2])  # type: ignore[list-item]


async def test_several_urls_failed_attempts_try_the_next_url(serve: StartServer) -> None:
    """Refused URLs are skipped in order until one answers."""
    server = await serve(make_manager())
    with refused_url() as refused_a, refused_url() as refused_b, trio.fail_after(GUARD):
        urls = [refused_a, refused_b, server.url]
        client, log = logged(urls, url_index=0, **fast())
        tried: list[str] = []
        client.add_listener("reconnecting", lambda event: tried.append(client.url))
        async with client:
            await client.wait_connected()
            assert client.url == server.url
            assert tried == [refused_b, server.url]
            assert client.stats.failed_attempts == 2
            assert log.types == ["reconnecting", "reconnecting", "connected"]


async def test_several_urls_reconnect_moves_to_the_next_server(serve: StartServer) -> None:
    """A lost connection reconnects to the next URL (wrapping around), rooms rejoined there."""
    manager_a, manager_b = make_manager(), make_manager()
    server_a = await serve(manager_a)
    server_b = await serve(manager_b)
    with trio.fail_after(GUARD):
        client, log = logged([server_a.url, server_b.url], url_index=1, **fast())
        async with client:
            await client.join_room("room:x")
            await client.wait_connected()
            assert client.url == server_b.url
            assert client.welcome is not None
            assert client.welcome["server_id"] == manager_b.server_id
            await wait_until(lambda: len(manager_b.connections) == 1)

            await server_b.stop()  # graceful shutdown: the client gets 1001
            await wait_until(lambda: client.state is ClientState.CONNECTED)
            assert client.url == server_a.url  # wrapped around
            assert client.welcome["server_id"] == manager_a.server_id
            assert client.rooms == {"room:x"}
            assert log.types == ["connected", "disconnected", "reconnecting", "connected"]
            assert log.events[1].close_code == 1001
            await wait_until(lambda: len(manager_a.connections) == 1)
            (conn,) = manager_a.connections.values()
            assert "room:x" in conn.rooms


# ---------------------------------------------------------------------------------------------
# rooms with history: the duplicate rule, recovery failures, messages the client does not know


class HidingStore(MemoryStreamStore):
    """A memory store whose reads do not see the offsets in `hidden` yet: writes still in
    flight when a recovery reads the store."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: set[int] = set()

    async def read(
        self, stream: str, epoch: str, after: int, limit: int, *, upto: int | None = None
    ) -> list[StreamEntry]:
        entries = await super().read(stream, epoch, after, limit + len(self.hidden), upto=upto)
        return [e for e in entries if e.position.offset not in self.hidden][:limit]


class Gate:
    """A headers provider that lets connection attempts through only while open."""

    def __init__(self) -> None:
        self.opened = trio.Event()
        self.opened.set()

    def close(self) -> None:
        self.opened = trio.Event()

    async def __call__(self) -> dict[str, str]:
        await self.opened.wait()
        return {}


def positioned(n: int, offset: int, epoch: str, room: str = "r") -> dict[str, Any]:
    """A room message as the server delivers it in a room with history."""
    return {"type": "m", "n": n, "room": room, "position": {"offset": offset, "epoch": epoch}}


async def test_a_late_offset_after_a_recovered_rejoin_is_delivered(serve: StartServer) -> None:
    """Offset 2 is still being written when the client rejoins with since=1: the replay sends
    3, the server answers recovered at position 3, then 2 lands and is delivered live. The
    client received 1 and 3 only: 2 is late, not a duplicate (before the fix: everything at or
    below the room_joined position counted as seen, and 2 was dropped)."""
    store = HidingStore()
    manager = make_manager(history=RoomHistory(store))
    server = await serve(manager)
    gate = Gate()
    with trio.fail_after(GUARD):
        client, log = logged(server.url, headers=gate, **fast())
        async with client:
            await client.join_room("r")
            first = await manager.broadcast_to_room("r", {"type": "m", "n": 1})
            assert first is not None and (await client.receive())["n"] == 1
            gate.close()
            (conn,) = manager.connections.values()
            await conn.close(1011, "test")
            await wait_until(lambda: log.count("disconnected") == 1)
            store.hidden.add(2)
            for n in (2, 3):
                await manager.broadcast_to_room("r", {"type": "m", "n": n})
            gate.opened.set()
            await wait_until(lambda: log.count("connected") == 2)
            assert (await client.receive())["n"] == 3  # the replay
            assert client.position("r") == {"offset": 3, "epoch": first.epoch}
            (conn,) = manager.connections.values()
            await conn.send(positioned(2, 2, first.epoch))  # the write landed: live, late
            await conn.send(positioned(3, 3, first.epoch))  # received in the replay
            await conn.send({"type": "marker"})
            assert (await client.receive())["n"] == 2
            assert (await client.receive())["type"] == "marker"
            assert client.stats.duplicates == 1
            assert client.position("r") == {"offset": 3, "epoch": first.epoch}


async def test_a_late_offset_below_the_first_join_position_is_delivered(
    serve: StartServer,
) -> None:
    manager = make_manager(history=RoomHistory())
    server = await serve(manager)
    with trio.fail_after(GUARD):
        async with WebSocketClient(server.url, **fast()) as client:
            for n in (1, 2, 3):  # before the client joins
                last = await manager.broadcast_to_room("r", {"type": "m", "n": n})
            assert last is not None
            await client.join_room("r")
            assert client.position("r") == last.to_json()
            (conn,) = manager.connections.values()
            await conn.send(positioned(2, 2, last.epoch))  # written before the join, late
            await conn.send(positioned(4, 4, last.epoch))
            await conn.send(positioned(2, 2, last.epoch))  # now it was received
            await conn.send({"type": "marker"})
            assert [(await client.receive()).get("n") for _ in range(3)] == [2, 4, None]
            assert client.stats.duplicates == 1


async def test_an_epoch_change_is_reported_once_and_positions_start_again(
    serve: StartServer,
) -> None:
    """A restarted server with a memory history has a new epoch: the rejoin answers
    recovered: false (epoch_changed). The client emits recovery_failed once, refetches the
    latest page, takes the new epoch's position, and delivers the new epoch's offsets although
    it received the same numbers in the old one."""
    manager_a = make_manager(history=RoomHistory())
    server_a = await serve(manager_a)
    with trio.fail_after(GUARD):
        client, log = logged(server_a.url, **fast())
        failures: list[ClientEvent] = []
        client.add_listener("recovery_failed", failures.append)
        async with client:
            await client.join_room("r")
            for n in (1, 2, 3):
                await manager_a.broadcast_to_room("r", {"type": "m", "n": n})
            assert [(await client.receive())["n"] for _ in range(3)] == [1, 2, 3]
            old = client.position("r")
            assert old is not None and old["offset"] == 3
            await server_a.stop()
            manager_b = make_manager(port=server_a.port, history=RoomHistory())
            server_b = await serve(manager_b)
            await wait_until(lambda: log.count("connected") == 2)
            history = await client.receive()  # asked for by the client itself
            assert history["type"] == "history" and history["room"] == "r"
            assert [(e.room, e.reason) for e in failures] == [("r", "epoch_changed")]
            new = client.position("r")
            assert new is not None and new["epoch"] != old["epoch"]
            for n in (1, 2):  # offsets 1 and 2 of the new epoch
                await manager_b.broadcast_to_room("r", {"type": "m", "n": n})
            assert [(await client.receive())["n"] for _ in range(2)] == [1, 2]
            assert client.stats.duplicates == 0
            assert client.position("r") == {"offset": 2, "epoch": new["epoch"]}
            assert len(failures) == 1
        await server_b.settle_and_stop()


async def test_a_room_gap_is_reported_and_unknown_messages_reach_the_app_untouched(
    serve: StartServer,
) -> None:
    manager = make_manager(history=RoomHistory())
    server = await serve(manager)
    with trio.fail_after(GUARD):
        client = WebSocketClient(server.url, **fast())
        failures: list[ClientEvent] = []
        client.add_listener("recovery_failed", failures.append)
        async with client:
            await client.join_room("r")
            first = await manager.broadcast_to_room("r", {"type": "m", "n": 1})
            assert first is not None and (await client.receive())["n"] == 1
            (conn,) = manager.connections.values()
            gap = {  # as docs/protocol.md (helper "rooms") describes it
                "type": "room_gap",
                "room": "r",
                "after": first.to_json(),
                "before": {"offset": 4, "epoch": first.epoch},
                "reason": "unavailable",
            }
            novel = {"type": "room_renamed", "room": "r", "to": "s", "id": 12}
            other = {"type": "brand_new", "payload": {"room": 5}}
            for message in (gap, novel, other):
                await conn.send(message)
            assert await client.receive() == gap
            assert await client.receive() == novel
            assert await client.receive() == other
            history = await client.receive()  # the refetch the gap asked for
            assert history["type"] == "history" and history["room"] == "r"
            assert [(e.room, e.reason) for e in failures] == [("r", "unavailable")]
            assert client.position("r") == first.to_json()


async def test_an_id_of_any_json_type_is_an_ordinary_message_field(serve: StartServer) -> None:
    """Only a string `id` can answer one of the client's requests; an application message may
    carry an `id` of any JSON type. (An object or array `id` once raised TypeError in the
    reader, which closed the client as if the server had been fatal.)"""
    manager = make_manager()

    @manager.on_message("tagged")
    async def tagged(conn: Connection, message: dict[str, Any]) -> None:
        await conn.send({"type": "tagged", "id": message["tag"], "room": "r"})

    server = await serve(manager)
    with trio.fail_after(GUARD):
        async with WebSocketClient(server.url, **fast()) as client:
            await client.join_room("r")
            for tag in ({"n": 1}, [1, 2], 7, None, "trio_rt.client:1"):
                await client.send({"type": "tagged", "tag": tag})
                assert await client.receive() == {"type": "tagged", "id": tag, "room": "r"}
            assert client.state is ClientState.CONNECTED
            assert client.stats.connections == 1


# ---------------------------------------------------------------------------------------------
# table subscriptions, against a scripted server (the wire protocol of docs/protocol.md, with
# the order of replies under the test's control; tests/engine/test_change_streams.py runs the client
# against the real ChangeStreamManager)


class ScriptedChanges:
    """A WebSocket server speaking the subscription part of the trio_rt protocol.

    `subscribe` with `since` replays `replay` (data_updates) BEFORE `subscribed`, as the real
    server does; a table in `refused` answers `not_permitted`; `hold` delays `subscribed` until
    set; `foreign` data_updates (another subscription id of the same table) are sent before
    `subscribed` too. `push()` sends a live change to every subscription of a table."""

    def __init__(self) -> None:
        self.port = 0
        self.replay: list[int] = []
        self.foreign: list[int] = []
        self.refused: set[str] = set()
        self.hold: trio.Event | None = None
        self.connections: list[Any] = []
        self.subscriptions: dict[str, tuple[Any, str]] = {}  # sid -> (ws, table)
        self.requests: list[dict[str, Any]] = []
        self.epoch = "e1"
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def change(self, sid: str, table: str, offset: int) -> str:
        event = {"operation": "insert", "key": {"id": offset}, "data": {"id": offset}}
        event["position"] = {"offset": offset, "epoch": self.epoch}
        return json.dumps(
            {"type": "data_update", "table": table, "subscription": sid, "event": event}
        )

    async def push(self, table: str, offset: int) -> None:
        for sid, (ws, subscribed_table) in list(self.subscriptions.items()):
            if subscribed_table == table:
                await ws.send(self.change(sid, table, offset))

    async def drop_all(self) -> None:
        for ws in self.connections:
            await ws.aclose(1011)

    async def handler(self, ws: Any) -> None:
        self.connections.append(ws)
        await ws.send(json.dumps({"type": "welcome", "connection_id": f"c{len(self.connections)}"}))
        try:
            async for raw in ws:
                await self.on_message(ws, json.loads(raw))
        except ConnectionClosed:
            pass
        finally:
            for sid in [s for s, (w, _) in self.subscriptions.items() if w is ws]:
                del self.subscriptions[sid]

    async def on_message(self, ws: Any, message: dict[str, Any]) -> None:
        self.requests.append(message)
        rid = message.get("id")
        if message["type"] == "unsubscribe":
            self.subscriptions.pop(message["subscription"], None)
            await ws.send(json.dumps({**message, "type": "unsubscribed", "id": rid}))
            return
        if message["type"] != "subscribe":
            return
        table = message["table"]
        if table in self.refused:
            error = {"type": "error", "code": "not_permitted", "message": "no", "id": rid}
            await ws.send(json.dumps(error))
            return
        sid = f"s{next(self._ids)}"
        self.subscriptions[sid] = (ws, table)
        for offset in self.foreign:
            await ws.send(self.change("not-yours", table, offset))
        if "since" in message:
            for offset in self.replay:
                await ws.send(self.change(sid, table, offset))
        if self.hold is not None:
            await self.hold.wait()
        last = max([0, *self.replay])
        reply = {"type": "subscribed", "id": rid, "subscription": sid, "table": table}
        reply["position"] = {"offset": last, "epoch": self.epoch}
        if "since" in message:
            reply["recovered"] = True
        await ws.send(json.dumps(reply))


@pytest.fixture
async def scripted(nursery: trio.Nursery) -> ScriptedChanges:
    server = ScriptedChanges()
    ws_server = await nursery.start(
        functools.partial(ws_serve, server.handler, 0, host="127.0.0.1", ping_interval=None)
    )
    server.port = ws_server.listeners[0].socket.getsockname()[1]
    return server


async def test_replayed_changes_carry_the_subscription_key(scripted: ScriptedChanges) -> None:
    """The renewal's replay arrives before `subscribed` names the new subscription id: the
    client holds those changes and delivers them with the key once it does (before the fix
    they reached the app without `key`)."""
    with trio.fail_after(GUARD):
        client, log = logged(scripted.url, **fast())
        async with client:
            key = await client.subscribe("posts", {"author": "ann"})
            assert client.subscriptions == {key: ("posts", {"author": "ann"})}
            for offset in (1, 2):
                await scripted.push("posts", offset)
            got = [await client.receive() for _ in range(2)]
            assert [(m["key"], m["event"]["position"]["offset"]) for m in got] == [
                (key, 1),
                (key, 2),
            ]
            scripted.replay = [2, 3, 4]  # 2 overlaps what the client received
            await scripted.drop_all()
            await wait_until(lambda: log.count("connected") == 2)
            # "connected" is logged before the renewal reaches the server: wait for it there
            await wait_until(lambda: [r["type"] for r in scripted.requests].count("subscribe") == 2)
            renewal = scripted.requests[-1]
            assert renewal["type"] == "subscribe" and renewal["since"]["offset"] == 2
            got = [await client.receive() for _ in range(2)]
            assert [(m["key"], m["event"]["position"]["offset"]) for m in got] == [
                (key, 3),
                (key, 4),
            ]
            assert client.stats.duplicates == 1
            await scripted.push("posts", 5)
            assert (await client.receive())["key"] == key


async def test_await_subscribe_raises_a_refusal_and_subscribe_nowait_delivers_it(
    scripted: ScriptedChanges,
) -> None:
    scripted.refused.add("secrets")
    with trio.fail_after(GUARD):
        async with WebSocketClient(scripted.url, **fast()) as client:
            with pytest.raises(ServerError) as refused:
                await client.subscribe("secrets")
            assert refused.value.code == "not_permitted"
            assert client.subscriptions == {}
            key = client.subscribe_nowait("secrets")
            error = await client.receive()
            assert error["type"] == "error" and error["key"] == key
            assert client.subscriptions == {}


async def test_subscribe_while_offline_returns_once_live_after_the_connect(
    scripted: ScriptedChanges,
) -> None:
    gate = Gate()
    gate.close()
    with trio.fail_after(GUARD):
        async with WebSocketClient(scripted.url, headers=gate, **fast()) as client:
            done: list[str] = []

            async def subscriber() -> None:
                done.append(await client.subscribe("posts"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(subscriber)
                await wait_until(lambda: bool(client.subscriptions))
                assert client.state is ClientState.CONNECTING and not done
                gate.opened.set()
            assert done == list(client.subscriptions)
            assert scripted.subscriptions  # live on the server
            await client.aclose()
            with pytest.raises(ClientClosed):
                await client.subscribe("posts")


async def test_unsubscribe_before_the_reply_drops_the_subscription_on_the_server(
    scripted: ScriptedChanges,
) -> None:
    scripted.hold = trio.Event()
    with trio.fail_after(GUARD):
        async with WebSocketClient(scripted.url, **fast()) as client:
            await client.wait_connected()
            pending: list[BaseException] = []

            async def subscriber() -> None:
                try:
                    await client.subscribe("posts")
                except ClientError as exc:
                    pending.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(subscriber)
                await wait_until(lambda: bool(scripted.subscriptions))
                (key,) = client.subscriptions
                client.unsubscribe(key)
            assert len(pending) == 1 and not isinstance(pending[0], ServerError)
            scripted.hold.set()  # `subscribed` arrives for a subscription nobody wants
            await wait_until(lambda: not scripted.subscriptions)  # the client unsubscribed it
            await scripted.push("posts", 1)  # nothing is delivered for it
            await client.send({"type": "ping"})  # (the scripted server ignores it)
            assert client.subscriptions == {}
            assert scripted.requests[-1]["type"] == "unsubscribe"
            await client.aclose()
            assert [m async for m in client] == []  # neither `unsubscribed` nor the change


async def test_changes_of_a_subscription_the_client_did_not_make_reach_the_app_untouched(
    scripted: ScriptedChanges,
) -> None:
    """Held while a subscribe for the same table was in flight, then not claimed by its reply:
    delivered as they came (e.g. the app sent a raw `subscribe` itself)."""
    scripted.foreign = [7]
    with trio.fail_after(GUARD):
        async with WebSocketClient(scripted.url, **fast()) as client:
            key = await client.subscribe("posts")
            foreign = await client.receive()
            assert foreign["subscription"] == "not-yours" and "key" not in foreign
            await scripted.push("posts", 1)
            assert (await client.receive())["key"] == key


async def test_a_room_message_with_an_id_field_goes_through_the_duplicate_rule(
    serve: StartServer,
) -> None:
    """An application's room message may carry a field named `id`: it is a room message (its
    offset is tracked, a repeat is a duplicate), not a reply (before the fix every message
    with an `id` bypassed the duplicate rule)."""
    manager = make_manager(history=RoomHistory())
    server = await serve(manager)
    with trio.fail_after(GUARD):
        async with WebSocketClient(server.url, **fast()) as client:
            await client.join_room("r")
            first = await manager.broadcast_to_room("r", {"type": "m", "n": 1, "id": 7})
            assert first is not None
            got = await client.receive()
            assert got["n"] == 1 and got["id"] == 7
            (conn,) = manager.connections.values()
            again = {**positioned(1, first.offset, first.epoch), "id": 7}
            await conn.send(again)  # the server repeats itself: a duplicate
            await conn.send({**positioned(2, first.offset + 1, first.epoch), "id": "x"})
            await conn.send({"type": "marker"})
            assert (await client.receive())["n"] == 2
            assert (await client.receive())["type"] == "marker"
            assert client.stats.duplicates == 1
            assert client.position("r") == {"offset": first.offset + 1, "epoch": first.epoch}


async def test_a_message_carrying_a_pending_request_id_is_not_its_reply(
    scripted: ScriptedChanges,
) -> None:
    """A message is a reply only if its `id` is a request this client has pending AND its
    type is a reply type: a `note` that carries the id of a subscribe in flight reaches the
    app untouched, and the subscription still goes live with its real reply."""
    scripted.hold = trio.Event()
    with trio.fail_after(GUARD):
        async with WebSocketClient(scripted.url, **fast()) as client:
            key = client.subscribe_nowait("posts")
            await wait_until(lambda: any(r["type"] == "subscribe" for r in scripted.requests))
            rid = scripted.requests[-1]["id"]
            (ws,) = scripted.connections
            await ws.send(json.dumps({"type": "note", "id": rid}))
            note = await client.receive()
            assert note == {"type": "note", "id": rid}  # no `key`: not the subscribe's reply
            scripted.hold.set()
            await wait_until(lambda: bool(scripted.subscriptions))
            await scripted.push("posts", 1)
            update = await client.receive()
            assert update["type"] == "data_update" and update["key"] == key

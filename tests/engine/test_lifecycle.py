"""Structured concurrency: nothing outlives its connection; slow clients never stall others."""

from __future__ import annotations

import gc
import json
import socket
import struct
import weakref
from typing import Any

import pytest
import trio

from trio_rt import CloseCode, Connection, SlowConsumerPolicy, WebSocketManager

from ..conftest import client, count_tasks, wait_until

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def masked_text_frame(payload: bytes, fin: bool = True) -> bytes:
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | 0x1])
    if n < 126:
        head += bytes([0x80 | n])
    else:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    return head + mask + body


async def raw_open(manager: WebSocketManager) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    await sock.connect(manager.address)
    await sock.send(HANDSHAKE)
    data = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in data:
            chunk = await sock.recv(4096)
            assert chunk, "server closed during handshake"
            data += chunk
    assert data.startswith(b"HTTP/1.1 101")
    return sock


def reset(sock: trio.socket.SocketType) -> None:
    """Close with an RST instead of a FIN: SO_LINGER with a zero timeout."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def drop_clean(manager: WebSocketManager, i: int) -> None:
    async with client(manager) as c:
        await c.request({"type": "join_room", "room": f"room-{i % 7}"})
        await c.request({"type": "join_room", "room": "everyone"})


async def drop_reset(manager: WebSocketManager, i: int) -> None:
    sock = await raw_open(manager)
    await sock.send(
        masked_text_frame(json.dumps({"type": "join_room", "room": "everyone"}).encode())
    )
    await trio.lowlevel.checkpoint()
    reset(sock)


async def drop_in_handshake(manager: WebSocketManager, i: int) -> None:
    sock = trio.socket.socket()
    await sock.connect(manager.address)
    await sock.send(HANDSHAKE[: 20 + i % 40])  # part of the request line or headers
    if i % 2:
        reset(sock)
    else:
        sock.close()


async def drop_mid_message(manager: WebSocketManager, i: int) -> None:
    sock = await raw_open(manager)
    await sock.send(masked_text_frame(json.dumps({"type": "join_room", "room": "mid"}).encode()))
    frame = masked_text_frame(b'{"type":"join_room","room":"never-finished"}')
    await sock.send(frame[: 3 + i % 10])  # a frame cut in the middle
    if i % 2:
        reset(sock)
    else:
        sock.close()


async def drop_fragmented(manager: WebSocketManager, i: int) -> None:
    sock = await raw_open(manager)
    # first fragment of a text message, the continuation never comes
    await sock.send(masked_text_frame(b'{"type":', fin=False))
    reset(sock)


@pytest.mark.slow
async def test_a_thousand_clients_dropped_every_way_leave_nothing(make_manager: Any) -> None:
    manager = make_manager(handshake_timeout=5.0, close_timeout=2.0)
    opened = 0
    disconnects = 0

    @manager.on_connection
    async def hello(conn: Connection) -> None:
        nonlocal opened
        opened += 1

    @manager.on_disconnect
    async def bye(conn: Connection, code: int) -> None:
        nonlocal disconnects
        disconnects += 1

    async with manager:
        idle_tasks = count_tasks()
        ways = [drop_clean, drop_reset, drop_in_handshake, drop_mid_message, drop_fragmented]
        total = 1000
        batch = 100
        for start in range(0, total, batch):
            async with trio.open_nursery() as nursery:
                for i in range(start, start + batch):
                    nursery.start_soon(ways[i % len(ways)], manager, i)
        await wait_until(lambda: not manager.connections, limit=30)
        await wait_until(lambda: count_tasks() == idle_tasks, limit=30)
        assert not manager.rooms
        assert manager._rooms.registry.member_count() == 0
        # only the all-clients and the servers channels stay subscribed
        assert manager.broker.channels == {manager._channels.all, manager._channels.servers}
        assert not manager._rooms.pending_subscriptions
        # every connection that was accepted got its disconnect handler, exactly once
        assert disconnects == opened
        assert manager.stats.connections_opened >= 600
        assert manager.stats.connections_closed == opened


async def test_slow_consumer_is_disconnected_and_others_keep_receiving(
    make_manager: Any,
) -> None:
    manager = make_manager(outbox_size=64, outbox_max_bytes=256 * 1024, close_timeout=1.0)
    codes: dict[str, int] = {}

    @manager.on_disconnect
    async def gone(conn: Connection, code: int) -> None:
        codes[conn.id] = code

    async with manager:
        # the slow client: completes the handshake, joins, then never reads again
        slow = await raw_open(manager)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await slow.send(masked_text_frame(b'{"type":"join_room","room":"r"}'))
        await wait_until(lambda: len(manager.members_of("r")) == 1)
        slow_id = next(iter(manager.members_of("r"))).id
        async with client(manager) as fast:
            await fast.request({"type": "join_room", "room": "r"})
            pad = "p" * 2000
            received = 0
            for i in range(2000):
                await manager.broadcast_to_room("r", {"type": "m", "i": i, "pad": pad})
                # the fast client reads as it goes
                msg = await fast.recv()
                assert msg["i"] == i
                received += 1
            assert received == 2000
            await wait_until(lambda: slow_id in codes)
            assert codes[slow_id] == CloseCode.SLOW_CONSUMER
            assert manager.stats.slow_consumers == 1
            # the queue of the slow client never grew past its bound while it lived
            assert len(manager.members_of("r")) == 1
        slow.close()


async def test_drop_oldest_policy_keeps_slow_client_connected(make_manager: Any) -> None:
    manager = make_manager(
        outbox_size=8,
        outbox_max_bytes=64 * 1024,
        slow_consumer_policy=SlowConsumerPolicy.DROP_OLDEST,
    )
    async with manager:
        slow = await raw_open(manager)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await slow.send(masked_text_frame(b'{"type":"join_room","room":"r"}'))
        await wait_until(lambda: len(manager.members_of("r")) == 1)
        conn = next(iter(manager.members_of("r")))
        for i in range(3000):
            await manager.broadcast_to_room("r", {"type": "m", "i": i, "pad": "p" * 2000})
            assert conn.outbox_depth <= 8
        assert manager.stats.dropped_messages > 0
        assert not conn.closed
        slow.close()


async def test_kill_during_broadcast_storm_leaves_no_task(make_manager: Any) -> None:
    """Clients vanish while broadcasts are in flight: writers blocked on dead sockets end."""
    manager = make_manager(close_timeout=1.0)
    async with manager:
        idle_tasks = count_tasks()
        socks = []
        for _ in range(20):
            s = await raw_open(manager)
            await s.send(masked_text_frame(b'{"type":"join_room","room":"storm"}'))
            socks.append(s)
        await wait_until(lambda: len(manager.members_of("storm")) == 20)
        for i in range(200):
            await manager.broadcast_to_room("storm", {"type": "m", "i": i, "pad": "q" * 500})
            if i == 100:
                for s in socks:
                    reset(s)
        await wait_until(lambda: not manager.connections, limit=15)
        await wait_until(lambda: count_tasks() == idle_tasks, limit=15)
        assert not manager.rooms


async def test_client_close_codes_reach_disconnect_handler(make_manager: Any) -> None:
    manager = make_manager()
    codes: list[int] = []

    @manager.on_disconnect
    async def gone(conn: Connection, code: int) -> None:
        codes.append(code)

    async with manager:
        async with client(manager) as c:
            await c.ws.aclose(4321, "bye")
        sock = await raw_open(manager)
        reset(sock)
        await wait_until(lambda: len(codes) == 2)
    assert codes == [4321, CloseCode.ABNORMAL]


async def test_shutdown_with_stuck_client_is_bounded(make_manager: Any) -> None:
    """A client that never answers the close handshake cannot hold the shutdown forever."""
    manager = make_manager(close_timeout=0.5, shutdown_timeout=5.0)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.serve)
            sock = await raw_open(manager)  # never reads, never answers the close frame
            await wait_until(lambda: len(manager.connections) == 1)
            nursery.cancel_scope.cancel()
    sock.close()
    assert not manager.connections


async def test_send_and_join_after_close_are_harmless(make_manager: Any) -> None:
    """A handler holding a connection that has gone: send is dropped, join joins nothing."""
    manager = make_manager()
    holder: list[Connection] = []

    @manager.on_connection
    async def keep(conn: Connection) -> None:
        holder.append(conn)

    async with manager:
        async with client(manager):
            pass
        await wait_until(lambda: not manager.connections)
        gone = holder[0]
        assert gone.closed and gone.close_code == CloseCode.NORMAL
        await gone.send({"type": "late"})  # no exception, nothing queued
        assert gone.outbox_depth == 0
        assert await manager.join_room(gone, "ghost") is False
        assert "ghost" not in manager.rooms


@pytest.mark.parametrize("compression", [False, True])
async def test_closed_connections_are_freed_without_the_cyclic_gc(
    make_manager: Any, compression: bool
) -> None:
    """No reference cycle keeps a closed connection alive: reference counting frees it (so
    freezing the GC, gc_freeze_interval, leaks nothing of trio_rt's, and full collections have
    no connection garbage to find)."""
    manager = make_manager(compression=compression, heartbeat_interval=5)
    refs: list[weakref.ref[Any]] = []

    @manager.on_connection
    async def track(conn: Connection) -> None:
        refs.append(weakref.ref(conn))
        refs.append(weakref.ref(conn._ws))

    async with manager:
        gc.collect()
        gc.disable()
        try:
            for i in range(3):
                async with client(manager) as c:
                    await c.request({"type": "join_room", "room": "r"})
                    await manager.broadcast_to_room("r", {"type": "m", "i": i})
                    assert (await c.recv())["i"] == i
            await wait_until(lambda: not manager.connections)
            await wait_until(lambda: all(r() is None for r in refs))
        finally:
            gc.enable()


async def test_an_open_connection_keeps_nothing_of_its_welcome(make_manager: Any) -> None:
    """The tasks that serve a connection live as long as it: none keeps the welcome (the
    app's dict, its encoded message) once it is queued (memory per idle connection)."""

    class Welcome(dict[str, Any]):
        pass  # a dict that can be weakly referenced

    welcomes: list[weakref.ref[Welcome]] = []

    def welcome(conn: Connection) -> dict[str, Any]:
        message = Welcome(type="welcome", connection_id=conn.id)
        welcomes.append(weakref.ref(message))
        return message

    manager = make_manager(welcome=welcome)
    async with manager, client(manager) as c:
        assert (await c.request({"type": "ping"}))["type"] == "pong"  # open, served
        assert len(welcomes) == 1
        assert welcomes[0]() is None  # freed by reference counting, no collection needed


async def test_services_stop_in_reverse_start_order(make_manager: Any) -> None:
    """A service that owns a resource (the fault app's Cassandra session) is added before the
    services that use it: at shutdown they stop first, each awaited, so their last write (a
    watcher's position save) still finds the resource open."""
    manager = make_manager()
    resource = {"open": True}
    seen: list[str] = []
    started: list[str] = []

    async def owner(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            resource["open"] = False
            seen.append("owner closed")

    def user(name: str) -> Any:
        async def run(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            started.append(name)
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await trio.sleep(0.01)  # a last write in flight
                    seen.append(f"{name} saw {'open' if resource['open'] else 'closed'}")

        return run

    manager.add_service(owner)
    manager.add_service(user("first"))
    async with manager:
        manager.add_service(user("added while serving"))
        await wait_until(lambda: len(started) == 2)
    assert seen == [
        "added while serving saw open",
        "first saw open",
        "owner closed",
    ]

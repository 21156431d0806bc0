"""The server over real loopback sockets: handshake, HTTP, dispatch, errors, rooms, broadcast."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import trio
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.trio.client import connect

from trio_rt import CloseCode, Connection, ProtocolError, Reject, WebSocketManager
from trio_rt._core.protocol import ErrorCode

from ..conftest import client, count_tasks, wait_until


async def http_get(manager: WebSocketManager, path: str) -> tuple[int, dict[str, str], bytes]:
    stream = await trio.open_tcp_stream(*manager.address)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        with trio.fail_after(5):
            while True:
                chunk = await stream.receive_some()
                if not chunk:
                    break
                data += chunk
                head, sep, body = data.partition(b"\r\n\r\n")
                if sep:
                    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
                    if len(body) >= int(headers.get("Content-Length", "0")):
                        break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    return status, headers, body


async def test_serve_reports_bound_port_and_health(make_manager: Any) -> None:
    manager = make_manager()
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(manager.serve)
        assert port != 0 and manager.port == port and host == "127.0.0.1"
        status, headers, body = await http_get(manager, "/health")
        assert status == 200
        assert headers["content-type"] == "application/json"
        health = json.loads(body)
        assert health["status"] == "ok" and health["connections"] == 0
        status, _, body = await http_get(manager, "/nope")
        assert status == 404 and json.loads(body)["error"] == "not found"
        manager.stop()


async def test_async_with_serves_inside_the_block(make_manager: Any) -> None:
    async with make_manager() as manager, client(manager) as c:
        assert c.welcome is not None
        assert c.welcome["connection_id"] in manager.connections
    with pytest.raises(RuntimeError):
        manager.address  # noqa: B018 - not serving any more


async def test_custom_http_route(make_manager: Any) -> None:
    from trio_rt import HttpResponse

    manager = make_manager()

    @manager.route("/hello")
    async def hello(request: Any) -> HttpResponse:
        return HttpResponse(200, b"hi", "text/plain")

    async with manager:
        status, headers, body = await http_get(manager, "/hello")
        assert (status, headers["content-type"], body) == (200, "text/plain", b"hi")


async def test_options_are_validated(make_manager: Any) -> None:
    for bad in [
        {"port": -1},
        {"port": "80"},
        {"max_connections": 0},
        {"heartbeat_interval": 0},
        {"heartbeat_interval": float("inf")},
        {"compression": "yes"},
        {"slow_consumer_policy": "maybe"},
        {"outbox_size": 0},
        {"max_message_size": True},
    ]:
        with pytest.raises(ValueError, match="invalid WebSocketManager options"):
            make_manager(**bad)
    with pytest.raises(TypeError, match="unknown WebSocketManager option"):
        make_manager(maxConnections=3)


async def test_max_connections_rejects_at_handshake_with_503(make_manager: Any) -> None:
    manager = make_manager(max_connections=2)
    async with manager:
        async with client(manager), client(manager):
            with pytest.raises(InvalidStatus) as info:
                async with connect(manager.url, open_timeout=5):
                    pass  # pragma: no cover
            assert info.value.response.status_code == 503
            assert json.loads(info.value.response.body)["error"] == "server full"
            assert manager.stats.handshakes_rejected["server_full"] == 1
            assert len(manager.connections) == 2
        await wait_until(lambda: not manager.connections)
        async with client(manager):  # a slot is free again
            pass


async def test_connection_handler_sees_handshake_and_may_reject(make_manager: Any) -> None:
    manager = make_manager()
    seen: list[Any] = []
    disconnected: list[str] = []

    @manager.on_connection
    async def authenticate(conn: Connection) -> None:
        seen.append(conn.request)
        token = conn.request.headers.get("Authorization")
        if token != "Bearer good":
            raise Reject(401, "bad token")
        conn.user_id = conn.request.query["user"][0]
        conn.state["role"] = "admin"
        await manager.join_room(conn, f"user:{conn.user_id}")

    @manager.on_disconnect
    async def gone(conn: Connection, code: int) -> None:
        disconnected.append(conn.user_id or "?")

    async with manager:
        with pytest.raises(InvalidStatus) as info:
            async with connect(manager.url + "chat?user=ann", open_timeout=5):
                pass  # pragma: no cover
        assert info.value.response.status_code == 401
        assert json.loads(info.value.response.body) == {"error": "bad token"}
        assert not manager.connections and not manager.rooms
        async with client(
            manager, "/chat?user=ann", additional_headers={"Authorization": "Bearer good"}
        ) as c:
            assert c.welcome is not None and c.welcome["user_id"] == "ann"
            req = seen[-1]
            assert req.path == "/chat" and req.query == {"user": ["ann"]}
            assert req.remote_address is not None and req.remote_address[0] == "127.0.0.1"
            assert [m.user_id for m in manager.members_of("user:ann")] == ["ann"]
        await wait_until(lambda: disconnected == ["ann"])
        assert not manager.rooms  # the rejected attempt left nothing behind either


async def test_connection_handler_crash_is_500_and_leaves_nothing(make_manager: Any) -> None:
    manager = make_manager()

    @manager.on_connection
    async def broken(conn: Connection) -> None:
        await manager.join_room(conn, "lobby")
        raise RuntimeError("boom")

    async with manager:
        with pytest.raises(InvalidStatus) as info:
            async with connect(manager.url, open_timeout=5):
                pass  # pragma: no cover
        assert info.value.response.status_code == 500
        assert not manager.connections and not manager.rooms


async def test_builtins_and_request_ids(make_manager: Any) -> None:
    manager = make_manager()
    async with manager, client(manager) as c:
        assert await c.request({"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
        assert await c.request({"type": "join_room", "room": "r", "id": "j"}) == {
            "type": "room_joined",
            "room": "r",
            "id": "j",
        }
        # idempotent join
        assert (await c.request({"type": "join_room", "room": "r"}))["type"] == "room_joined"
        assert len(manager.members_of("r")) == 1
        assert await c.request({"type": "leave_room", "room": "r"}) == {
            "type": "room_left",
            "room": "r",
        }
        assert (await c.request({"type": "leave_room", "room": "r"}))["type"] == "room_left"
        assert "r" not in manager.rooms


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_json"),
        ("[]", "invalid_message"),
        ('{"no": "type"}', "missing_type"),
        ('{"type": "nobody_handles_this"}', "unknown_type"),
        ('{"type": "join_room", "room": 42}', "invalid_field"),
        ('{"type": "join_room", "room": "' + "x" * 200 + '"}', "too_large"),
        (b"\x00\x01binary", "unsupported_data"),
        ('{"type": "echo", "data": 1, "id": {"nested": 1}}', "invalid_field"),
    ],
)
async def test_bad_input_gets_error_and_connection_survives(
    make_manager: Any, frame: str | bytes, code: str
) -> None:
    manager = make_manager()

    @manager.on_message("echo")
    async def echo(conn: Connection, message: dict[str, Any]) -> None:
        await conn.send({"type": "echo", "data": message.get("data")})

    async with manager, client(manager) as c:
        await c.send(frame)
        reply = await c.recv()
        assert reply["type"] == "error" and reply["code"] == code
        assert reply["message"]
        # still usable
        assert await c.request({"type": "echo", "data": 2}) == {"type": "echo", "data": 2}


async def test_oversized_message_closes_1009_and_invalid_utf8_closes_1007(
    make_manager: Any,
) -> None:
    manager = make_manager(max_message_size=1000)
    codes: list[int] = []

    @manager.on_disconnect
    async def gone(conn: Connection, code: int) -> None:
        codes.append(code)

    async with manager:
        async with client(manager) as c:
            await c.send(json.dumps({"type": "x", "pad": "y" * 2000}))
            with pytest.raises(ConnectionClosed) as info:
                await c.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        # invalid UTF-8 in a text frame: write the raw frame ourselves
        async with client(manager) as c:
            bad = b"\xff\xfe"
            mask = b"\x00\x00\x00\x00"
            await c.ws.stream.send_all(bytes([0x81, 0x80 | len(bad)]) + mask + bad)
            with pytest.raises(ConnectionClosed) as info:
                await c.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1007
        await wait_until(lambda: len(codes) == 2)
        assert sorted(codes) == [1007, 1009]


async def test_handler_exception_is_logged_replied_and_survived(
    make_manager: Any, caplog: pytest.LogCaptureFixture
) -> None:
    manager = make_manager()
    errors: list[Exception] = []

    @manager.on_message("explode")
    async def explode(conn: Connection, message: dict[str, Any]) -> None:
        raise KeyError("secret detail")

    @manager.on_message("refuse")
    async def refuse(conn: Connection, message: dict[str, Any]) -> None:
        raise ProtocolError(ErrorCode.INVALID_FIELD, "'message' must be under 500 characters")

    @manager.on_error
    async def on_error(conn: Connection, exc: Exception) -> None:
        errors.append(exc)

    async with manager, client(manager) as c:
        reply = await c.request({"type": "explode", "id": 9})
        assert reply["code"] == "internal_error" and reply["id"] == 9
        assert "secret" not in reply["message"]
        assert isinstance(errors[0], KeyError)
        assert "message handler failed" in caplog.text and "Traceback" in caplog.text
        reply = await c.request({"type": "refuse"})
        assert reply["code"] == "invalid_field" and "500" in reply["message"]
        assert (await c.request({"type": "ping"}))["type"] == "pong"


async def test_fallback_handler_and_event_style_registration(make_manager: Any) -> None:
    manager = make_manager()
    got: list[dict[str, Any]] = []

    @manager.on("message")
    async def any_message(conn: Connection, message: dict[str, Any]) -> None:
        got.append(message)
        await conn.send({"type": "ack"})

    with pytest.raises(ValueError):
        manager.on_message("join_room")
    with pytest.raises(TypeError):
        manager.on_disconnect(lambda c, code: None)  # type: ignore[arg-type, return-value]

    async with manager, client(manager) as c:
        assert (await c.request({"type": "whatever", "x": 1}))["type"] == "ack"
        assert got == [{"type": "whatever", "x": 1}]


async def test_room_full_not_permitted_and_kick(make_manager: Any) -> None:
    manager = make_manager(auto_create_rooms=False)
    await manager.create_room("small", max_users=1, moderators=["mod"])

    @manager.on_connection
    async def who(conn: Connection) -> None:
        conn.user_id = conn.request.query["u"][0]

    async with (
        manager,
        client(manager, "/?u=ann") as ann,
        client(manager, "/?u=bob") as bob,
        client(manager, "/?u=mod") as mod,
    ):
        assert (await ann.request({"type": "join_room", "room": "small"}))["type"] == (
            "room_joined"
        )
        reply = await bob.request({"type": "join_room", "room": "small", "id": 1})
        assert reply["code"] == "room_full" and reply["id"] == 1
        reply = await bob.request({"type": "join_room", "room": "secret"})
        assert reply["code"] == "not_permitted"
        # only moderators can kick
        reply = await bob.request({"type": "kick", "room": "small", "user_id": "ann"})
        assert reply["code"] == "not_permitted"
        assert (await mod.request({"type": "kick", "room": "small", "user_id": "ann"})) == {
            "type": "kicked",
            "room": "small",
            "user_id": "ann",
        }
        kicked = await ann.recv()
        assert kicked == {"type": "room_kicked", "room": "small", "by": "mod", "reason": ""}
        assert manager.members_of("small") == frozenset()
        assert "small" not in manager.rooms  # empty and not persistent: removed
        # ann is still connected
        assert (await ann.request({"type": "ping"}))["type"] == "pong"


async def test_broadcast_variants_exclude_and_multi_room_once(make_manager: Any) -> None:
    manager = make_manager()
    async with manager, client(manager) as a, client(manager) as b, client(manager) as c:
        await a.request({"type": "join_room", "room": "x"})
        await a.request({"type": "join_room", "room": "y"})
        await b.request({"type": "join_room", "room": "y"})
        conn_a = manager.connections[a.welcome["connection_id"]]  # type: ignore[index]

        await manager.broadcast_to_rooms(["x", "y", "x"], {"type": "m", "n": 1})
        assert await a.recv() == {"type": "m", "n": 1}
        assert await b.recv() == {"type": "m", "n": 1}
        await manager.broadcast_to_room("y", {"type": "m", "n": 2}, exclude=conn_a)
        assert await b.recv() == {"type": "m", "n": 2}
        await manager.broadcast({"type": "m", "n": 3})
        for x in (a, b, c):
            assert await x.recv() == {"type": "m", "n": 3}
        # `a` got the multi-room message once, and nothing for n=2: its next is n=3 above.
        # c is in no room: it only got the broadcast to all. Check nothing else is queued:
        for x in (a, b, c):
            assert await x.request({"type": "ping"}) == {"type": "pong"}
        with pytest.raises(TypeError):
            await manager.broadcast_to_rooms("xy", {"type": "m"})


async def test_welcome_can_be_replaced_or_suppressed(make_manager: Any) -> None:
    manager = make_manager(welcome=lambda conn: {"type": "welcome", "motd": "hi"})
    async with manager, client(manager) as c:
        assert c.welcome == {"type": "welcome", "motd": "hi"}
    quiet = make_manager(welcome=lambda conn: None)
    async with quiet, connect(quiet.url) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await ws.recv()) == {"type": "pong"}


async def test_messages_sent_in_connection_handler_follow_the_welcome(make_manager: Any) -> None:
    manager = make_manager()

    @manager.on_connection
    async def greet(conn: Connection) -> None:
        await conn.send({"type": "hello"})

    async with manager, client(manager) as c:
        assert await c.recv() == {"type": "hello"}


async def test_graceful_shutdown_drains_then_closes_1001(make_manager: Any) -> None:
    manager = make_manager()
    codes: list[int] = []

    @manager.on_disconnect
    async def gone(conn: Connection, code: int) -> None:
        codes.append(code)

    async with trio.open_nursery() as nursery:
        await nursery.start(manager.serve)
        async with client(manager) as c:
            await c.request({"type": "join_room", "room": "r"})
            for i in range(50):
                await manager.broadcast_to_room("r", {"type": "m", "i": i})
            nursery.cancel_scope.cancel()  # cancelling serve = graceful shutdown
            received = [await c.recv() for _ in range(50)]
            assert [m["i"] for m in received] == list(range(50))
            with pytest.raises(ConnectionClosed) as info:
                await c.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    assert codes == [1001]
    assert not manager.connections


async def test_closing_from_a_handler(make_manager: Any) -> None:
    manager = make_manager()
    codes: list[int] = []

    @manager.on_message("bye")
    async def bye(conn: Connection, message: dict[str, Any]) -> None:
        await conn.send({"type": "goodbye"})
        await conn.close(4100, "asked to leave")

    @manager.on_disconnect
    async def gone(conn: Connection, code: int) -> None:
        codes.append(code)

    async with manager, client(manager) as c:
        await c.send({"type": "bye"})
        assert await c.recv() == {"type": "goodbye"}
        with pytest.raises(ConnectionClosed) as info:
            await c.recv()
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4100, "asked to leave")
        await wait_until(lambda: codes == [4100])


async def test_compression_negotiated_only_when_enabled(make_manager: Any) -> None:
    for enabled in (True, False):
        manager = make_manager(compression=enabled)
        async with manager, client(manager) as c:
            await c.request({"type": "join_room", "room": "r"})
            await manager.broadcast_to_room("r", {"type": "m", "pad": "z" * 5000})
            assert (await c.recv())["pad"] == "z" * 5000
            assert bool(c.ws.protocol.extensions) is enabled


async def test_heartbeat_closes_a_client_that_stops_answering(make_manager: Any) -> None:
    manager = make_manager(heartbeat_interval=0.05, heartbeat_timeout=0.2)
    codes: list[int] = []

    @manager.on_disconnect
    async def gone(conn: Connection, code: int) -> None:
        codes.append(code)

    # a healthy client answers pings automatically and stays
    async with manager, client(manager) as healthy:
        # a raw TCP client that completes the handshake and then never reads again
        sock = trio.socket.socket()
        await sock.connect(manager.address)
        await sock.send(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await wait_until(lambda: len(manager.connections) == 2)
        await wait_until(lambda: codes == [CloseCode.HEARTBEAT_TIMEOUT])
        sock.close()
        assert (await healthy.request({"type": "ping"}))["type"] == "pong"
        assert len(manager.connections) == 1


async def test_handshake_timeout_drops_slow_handshakes(make_manager: Any) -> None:
    manager = make_manager(handshake_timeout=0.2)
    async with manager:
        with socket.create_connection(manager.address) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finishes the request
            sock.settimeout(5)
            assert await trio.to_thread.run_sync(sock.recv, 100) == b""  # server hung up
        assert not manager.connections


async def test_a_broadcast_is_serialized_and_framed_once(
    make_manager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trio_rt._core.outbox as outbox_module
    import trio_rt._engine.delivery as delivery_module

    calls = {"encode": 0, "frame": 0}
    real_encode, real_frame = delivery_module.encode, outbox_module.encode_text_frame

    def counting_encode(data: dict[str, Any]) -> bytes:
        calls["encode"] += 1
        return real_encode(data)

    def counting_frame(payload: bytes) -> bytes:
        calls["frame"] += 1
        return real_frame(payload)

    manager = make_manager(compression=False)
    async with manager:
        clients = []
        async with trio.open_nursery() as nursery:

            async def join() -> None:
                async with client(manager) as c:
                    await c.request({"type": "join_room", "room": "many"})
                    clients.append(c)
                    await trio.sleep_forever()

            for _ in range(20):
                nursery.start_soon(join)
            # Every client has its room_joined (a member can be in the room a moment before
            # its reply is queued: a broadcast then would reach it first).
            await wait_until(lambda: len(clients) == 20)
            monkeypatch.setattr(delivery_module, "encode", counting_encode)
            monkeypatch.setattr(outbox_module, "encode_text_frame", counting_frame)
            await manager.broadcast_to_room("many", {"type": "m", "x": 1})
            for c in clients:
                assert await c.recv() == {"type": "m", "x": 1}
            assert calls == {"encode": 1, "frame": 1}
            nursery.cancel_scope.cancel()


async def test_compressed_batches_arrive_whole_and_in_order(make_manager: Any) -> None:
    manager = make_manager(compression=True)
    async with manager, client(manager) as a, client(manager) as b:
        for c in (a, b):
            await c.request({"type": "join_room", "room": "z"})
        for i in range(300):  # faster than the clients read: the writers send batches
            await manager.broadcast_to_room("z", {"type": "m", "i": i, "pad": "q" * (i % 50)})
        for c in (a, b):
            assert c.ws.protocol.extensions
            got = [await c.recv() for _ in range(300)]
            assert [m["i"] for m in got] == list(range(300))
            assert all(m["pad"] == "q" * (m["i"] % 50) for m in got)


async def test_subprotocol_is_selected_from_the_clients_offer_never_failing(
    make_manager: Any,
) -> None:
    manager = make_manager()
    async with manager:
        for offered, selected in [
            (["bearer.abc", "trio_rt.v1"], "trio_rt.v1"),  # a browser sending a token this way
            (None, None),
            (["something-else"], None),  # accepted, nothing selected
        ]:
            async with client(manager, subprotocols=offered) as c:
                assert c.ws.subprotocol == selected
    with pytest.raises(ValueError, match="subprotocols"):
        make_manager(subprotocols=["bad value"])
    with pytest.raises(ValueError, match="subprotocols"):
        make_manager(subprotocols="trio_rt.v1")


async def test_a_connection_closed_before_its_request_ends_at_once(make_manager: Any) -> None:
    """The handshake waits for the request without websockets' two racing tasks; a peer that
    hangs up first still ends it at once, not at handshake_timeout."""
    manager = make_manager(handshake_timeout=60)
    async with manager:
        idle = count_tasks()
        for payload in (b"", b"GET / HTTP/1.1\r\nHost: x\r\n"):  # nothing, half a request
            sock = trio.socket.socket()
            await sock.connect(manager.address)
            if payload:
                await sock.send(payload)
            await wait_until(lambda: count_tasks() > idle)
            sock.close()
            await wait_until(lambda: count_tasks() == idle, limit=5)
        async with client(manager) as c:  # and the server still serves
            assert (await c.request({"type": "ping"}))["type"] == "pong"

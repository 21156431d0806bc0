"""The HTTP server API (trio_rt._engine.server_api.ServerAPI) with a real HTTP client (the standard
library's, in a thread): every documented call works, credentials and scopes are checked,
errors are JSON with clear codes, and the OpenAPI document describes exactly the routes
served. The sans-IO HTTP parser is tested without sockets."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import jwt
import pytest
import trio

from trio_rt import (
    Connection,
    MemoryBroker,
    MemoryHub,
    PresenceService,
    Rate,
    RoomHistory,
    WebSocketManager,
)
from trio_rt._core.http_parse import HttpError, RequestReader, render_response
from trio_rt._engine.auth import TokenVerifier
from trio_rt._engine.server_api import OPENAPI_PATH, APIKey, ServerAPI

from ..conftest import Client, client, wait_until

ADMIN = APIKey("admin", "admin-secret-0123456789")
PUBLISH_ONLY = APIKey("billing", "billing-secret-0123456789", frozenset({"publish"}))
JWT_SECRET = "jwt-secret-" + "y" * 40


def identified(**options: Any) -> WebSocketManager:
    options.setdefault("host", "127.0.0.1")
    options.setdefault("port", 0)
    options.setdefault("heartbeat_interval", None)
    manager = WebSocketManager(**options)

    @manager.on_connection
    async def identify(conn: Connection) -> None:
        users = conn.request.query.get("user")
        if users:
            conn.user_id = users[0]

    return manager


Reply = tuple[int, dict[str, str], Any]


def _call(
    url: str,
    body: Any = None,
    *,
    key: str | None = ADMIN.secret,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> Reply:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


async def call(api: ServerAPI, path: str, body: Any = None, **kwargs: Any) -> Reply:
    return await trio.to_thread.run_sync(lambda: _call(api.url + path, body, **kwargs))


def token(scope: str, sub: str = "svc", secret: str = JWT_SECRET) -> str:
    claims = {"sub": sub, "exp": int(time.time()) + 300, "scope": scope}
    return jwt.encode(claims, secret, algorithm="HS256")


def make_api(manager: WebSocketManager, **kwargs: Any) -> ServerAPI:
    kwargs.setdefault("keys", [ADMIN, PUBLISH_ONLY])
    kwargs.setdefault("verifier", TokenVerifier(JWT_SECRET))
    return ServerAPI(manager, **kwargs)


async def join(c: Client, room: str) -> None:
    assert (await c.request({"type": "join_room", "room": room}))["type"] == "room_joined"


# -- sans-IO ----------------------------------------------------------------------------------
def test_the_reader_parses_pipelined_requests_and_enforces_its_limits() -> None:
    reader = RequestReader(max_body=10)
    reader.feed(b"POST /api/x?a=1 HTTP/1.1\r\nContent-Length: 4\r\nX-Y:  z \r\n\r\nab")
    assert reader.next_request() is None  # half a body
    reader.feed(b"cdGET /p HTTP/1.0\r\n\r\n")
    first = reader.next_request()
    assert first is not None and first.body == b"abcd" and first.path == "/api/x"
    assert first.query == {"a": ["1"]} and first.headers["x-y"] == "z" and first.keep_alive
    second = reader.next_request()
    assert second is not None and second.method == "GET" and not second.keep_alive
    for head, status in [
        (b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"NONSENSE\r\n\r\n", 400),
        (b"GET / HTTP/2\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
    ]:
        bad = RequestReader(max_body=10)
        bad.feed(head)
        with pytest.raises(HttpError) as info:
            bad.next_request()
        assert info.value.status == status and info.value.close
    huge = RequestReader(max_head=100)
    huge.feed(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 50)
    with pytest.raises(HttpError) as info:
        huge.next_request()
    assert info.value.status == 431
    with pytest.raises(ValueError):
        render_response(200, b"", headers={"X": "a\r\nSet-Cookie: b"})


def test_construction_refuses_an_open_api_and_weak_keys(make_manager: Any) -> None:
    manager = make_manager()
    with pytest.raises(ValueError, match="never open"):
        ServerAPI(manager)
    with pytest.raises(ValueError, match="16 characters"):
        APIKey("short", "abc")
    with pytest.raises(ValueError, match="unique"):
        ServerAPI(manager, keys=[ADMIN, APIKey("admin", "another-secret-0123456")])
    assert "admin-secret" not in repr(ADMIN)


# -- over HTTP --------------------------------------------------------------------------------
async def test_the_openapi_document_describes_exactly_the_routes_served() -> None:
    manager = identified()
    api = make_api(manager)
    async with manager:
        status, headers, doc = await call(api, OPENAPI_PATH, key=None, method="GET")
        assert status == 200 and headers["Content-Type"] == "application/json"
        assert doc["openapi"] == "3.1.0"
        assert set(doc["paths"]) == {*api.routes, OPENAPI_PATH}
        assert set(api.routes) == {
            f"/api/{c}"
            for c in ("publish", "broadcast", "disconnect", "kick", "presence", "history")
        }
        for path, operations in doc["paths"].items():
            (method,) = operations
            if path == OPENAPI_PATH:
                continue
            assert method == "post"
            # Served: without credentials the answer is 401, not 404.
            status, _, body = await call(api, path, {}, key=None)
            assert status == 401 and body["error"]["code"] == "unauthorized", path
            scope = api.routes[path].scope
            assert f"`{scope}`" in operations[method]["description"]
            assert "requestBody" in operations[method] and "200" in operations[method]["responses"]
        status, _, body = await call(api, "/api/nope", {}, key=None)
        assert status == 404 and body["error"]["code"] == "not_found"


async def test_credentials_and_scopes_are_checked() -> None:
    manager = identified()
    api = make_api(manager)
    body = {"data": {"type": "note"}}
    async with manager:
        status, headers, reply = await call(api, "/api/broadcast", body, key=None)
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
        assert (await call(api, "/api/broadcast", body, key="wrong-key-0123456789"))[0] == 401
        assert (await call(api, "/api/broadcast", body, key=ADMIN.secret + "x"))[0] == 401
        status, _, reply = await call(api, "/api/broadcast", body, key=PUBLISH_ONLY.secret)
        assert status == 403 and reply["error"]["code"] == "forbidden"
        assert "'broadcast'" in reply["error"]["message"]
        status, _, _ = await call(
            api, "/api/broadcast", body, key=None, headers={"X-API-Key": ADMIN.secret}
        )
        assert status == 200
        assert (await call(api, "/api/broadcast", body, key=token("broadcast kick")))[0] == 200
        assert (await call(api, "/api/broadcast", body, key=token("publish")))[0] == 403
        forged = token("broadcast", secret="other-secret-" + "z" * 40)
        status, _, reply = await call(api, "/api/broadcast", body, key=forged)
        assert status == 401 and "invalid token" in reply["error"]["message"]
        assert api.calls["broadcast", "ok"] == 2 and api.calls["broadcast", "unauthorized"] == 4


async def test_publish_is_delivered_and_an_idempotency_key_makes_it_once() -> None:
    manager = identified(history=RoomHistory())
    api = make_api(manager)
    async with manager, client(manager) as member:
        await join(member, "r")
        status, _, ack = await call(
            api, "/api/publish", {"room": "r", "data": {"n": 1}}, key=PUBLISH_ONLY.secret
        )
        assert status == 200 and ack["room"] == "r" and ack["position"]["offset"] == 1
        got = await member.recv()
        assert got["type"] == "publication" and got["data"] == {"n": 1} and got["user_id"] is None
        once = {"Idempotency-Key": "order-42"}
        first = await call(api, "/api/publish", {"room": "r", "data": 2}, headers=once)
        again = await call(api, "/api/publish", {"room": "r", "data": 2}, headers=once)
        assert first[0] == again[0] == 200 and first[2] == again[2]
        assert first[2]["position"]["offset"] == 2
        status, _, reply = await call(api, "/api/publish", {"room": "s", "data": 2}, headers=once)
        assert status == 409 and reply["error"]["code"] == "conflict"
        await call(api, "/api/publish", {"room": "r", "data": "fence"})
        assert (await member.recv())["data"] == 2
        assert (await member.recv())["data"] == "fence"  # no second copy of 2 before it
        status, _, page = await call(api, "/api/history", {"room": "r", "limit": 10})
        assert status == 200 and [m["data"] for m in page["messages"]] == [{"n": 1}, 2, "fence"]
        assert page["position"]["offset"] == 3
        status, _, page = await call(
            api, "/api/history", {"room": "r", "limit": 1, "before": page["position"]}
        )
        assert [m["data"] for m in page["messages"]] == [2]
        status, _, reply = await call(api, "/api/publish", {"room": "bad room", "data": 1})
        assert status == 400 and reply["error"]["code"] == "invalid_field"
        assert (await call(api, "/api/publish", {"room": "r"}))[0] == 400


async def test_broadcast_kick_and_history_errors() -> None:
    manager = identified()
    api = make_api(manager)
    async with manager, client(manager, "/?user=ann") as ann:
        await join(ann, "r")
        assert (await call(api, "/api/broadcast", {"data": {"type": "note", "x": 1}}))[0] == 200
        assert await ann.recv() == {"type": "note", "x": 1}
        status, _, reply = await call(api, "/api/broadcast", {"data": {"x": 1}})
        assert status == 400 and "'type'" in reply["error"]["message"]
        status, _, reply = await call(api, "/api/kick", {"room": "r", "user_id": "ann"})
        assert status == 200 and reply == {"room": "r", "user_id": "ann"}
        kicked = await ann.recv()
        assert kicked["type"] == "room_kicked" and kicked["room"] == "r"
        assert manager.members_of("r") == frozenset()
        status, _, reply = await call(api, "/api/history", {"room": "r"})
        assert status == 404 and reply["error"]["code"] == "no_history"
        assert (await call(api, "/api/kick", {"room": "r"}))[0] == 400


async def test_disconnect_reaches_the_users_connections_on_every_server() -> None:
    hub = MemoryHub()
    m1, m2 = identified(broker=MemoryBroker(hub)), identified(broker=MemoryBroker(hub))
    api = make_api(m1)
    make_api(m2, port=None)  # no listener: honours disconnects made through m1's API
    async with (
        m1,
        m2,
        client(m1, "/?user=ann") as a1,
        client(m2, "/?user=ann") as a2,
        client(m2, "/?user=bob") as bob,
    ):
        status, _, reply = await call(api, "/api/disconnect", {"user_id": "ann", "reason": "bye"})
        assert status == 200 and reply == {"user_id": "ann"}
        for c in (a1, a2):
            with trio.fail_after(5):
                await c.ws.wait_closed()
            assert c.ws.close_code == 4002 and c.ws.close_reason == "bye"
        assert (await bob.request({"type": "ping"}))["type"] == "pong"
        await call(api, "/api/disconnect", {"user_id": "bob", "reconnect": False})
        with trio.fail_after(5):
            await bob.ws.wait_closed()
        assert bob.ws.close_code == 4003
        status, _, reply = await call(api, "/api/disconnect", {"user_id": "x", "reason": 5})
        assert status == 400


async def test_http_errors_are_json_with_clear_codes() -> None:
    manager = identified()
    api = make_api(manager, max_body=64, rate=Rate(3, 3600))
    async with manager:
        status, _, reply = await call(api, "/api/broadcast", raw=b"{nope")
        assert (status, reply["error"]["code"]) == (400, "invalid_json")
        status, _, reply = await call(api, "/api/broadcast", raw=b"[1]")
        assert (status, reply["error"]["code"]) == (400, "invalid_json")
        status, _, reply = await call(
            api, "/api/broadcast", raw=b"{}", headers={"Content-Type": "text/plain"}
        )
        assert (status, reply["error"]["code"]) == (415, "unsupported_media_type")
        # Rate limited: three calls per hour for this client (the three above).
        status, headers, reply = await call(api, "/api/broadcast", {"data": {"type": "t"}})
        assert (status, reply["error"]["code"]) == (429, "rate_limited")
        assert int(headers["Retry-After"]) >= 1
        status, _, reply = await call(api, "/api/broadcast", raw=b"{" + b" " * 100 + b"}")
        assert (status, reply["error"]["code"]) == (413, "too_large")
        status, headers, reply = await call(api, "/api/broadcast", key=None, method="GET")
        assert (status, reply["error"]["code"]) == (405, "method_not_allowed")
        assert headers["Allow"] == "POST"


async def test_a_keep_alive_connection_serves_several_requests() -> None:
    manager = identified()
    api = make_api(manager)
    async with manager:
        assert api.address is not None

        def two_requests() -> list[int]:
            conn = http.client.HTTPConnection(*api.address, timeout=10)  # type: ignore[misc]
            statuses = []
            for _ in range(2):
                conn.request("GET", OPENAPI_PATH)
                response = conn.getresponse()
                response.read()
                statuses.append(response.status)
            sock = conn.sock
            conn.close()
            assert sock is None or isinstance(sock, socket.socket)
            return statuses

        assert await trio.to_thread.run_sync(two_requests) == [200, 200]


async def test_the_listener_stops_with_the_manager() -> None:
    manager = identified()
    api = make_api(manager)
    async with manager:
        await wait_until(lambda: api.address is not None)
        url = api.url
    assert api.address is None
    with pytest.raises(OSError):
        await trio.to_thread.run_sync(lambda: _call(url + OPENAPI_PATH, method="GET"))


async def test_presence_lists_the_members_or_only_counts_above_max_members() -> None:
    manager = identified()
    api = make_api(manager)
    async with manager:
        status, _, reply = await call(api, "/api/presence", {"room": "r"})
        assert status == 404 and reply["error"]["code"] == "no_presence"  # no PresenceService
    manager = identified()
    PresenceService(manager, max_members=2)
    api = make_api(manager)
    async with (
        manager,
        client(manager, "/?user=ann") as ann,
        client(manager, "/?user=ann") as ann2,
        client(manager, "/?user=bob") as bob,
    ):
        await join(ann, "r")
        await join(ann2, "r")
        status, _, reply = await call(api, "/api/presence", {"room": "r"}, key=PUBLISH_ONLY.secret)
        assert status == 403  # the presence scope is needed
        status, _, reply = await call(api, "/api/presence", {"room": "r"})
        assert status == 200 and reply["too_large"] is False
        assert (reply["room"], reply["users"], reply["connections"]) == ("r", 1, 2)
        assert reply["members"] == [{"user_id": "ann", "connections": 2, "info": None}]
        await join(bob, "r")
        extra = client(manager, "/?user=cy")
        async with extra as cy:
            await join(cy, "r")
            status, _, reply = await call(api, "/api/presence", {"room": "r"})
            assert status == 200 and reply["too_large"] is True and reply["members"] is None
            assert (reply["users"], reply["connections"]) == (3, 4)
        status, _, reply = await call(api, "/api/presence", {"room": "bad room"})
        assert status == 400 and reply["error"]["code"] == "invalid_field"

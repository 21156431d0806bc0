"""Every example runs here: README's sample, examples/chat.py and examples/capabilities/*."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_rt_examples import chat, web_ui
from trio_rt_examples.capabilities import (
    broadcasting,
    connection_management,
    message_handling,
    room_management,
    server_setup,
)
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.trio.client import connect
from websockets.typing import Subprotocol

from trio_rt import WebSocketManager

from ..conftest import client, wait_until

ROOT = Path(__file__).resolve().parents[2]


def readme_sample() -> str:
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code is not None
    return code.group(1)


async def test_readme_sample_runs() -> None:
    source = readme_sample().replace("port=3001", "port=0").replace("trio.run(main)", "")
    namespace: dict[str, Any] = {}
    exec(compile(source, "README.md", "exec"), namespace)
    manager: WebSocketManager = namespace["manager"]
    async with manager, client(manager, "/?user=ann") as ann:
        assert ann.welcome is not None and ann.welcome["user_id"] == "ann"
        # Only members write to a room; bad payloads get a validation error, not internal_error.
        reply = await ann.request(
            {"type": "chat_message", "payload": {"room": "lobby", "message": "hi"}}
        )
        assert reply["type"] == "error" and reply["code"] == "not_in_room", reply
        await ann.request({"type": "join_room", "room": "lobby"})
        for bad in [
            {"type": "chat_message"},
            {"type": "chat_message", "payload": {}},
            {"type": "chat_message", "payload": {"room": "lobby", "message": 5}},
            {"type": "chat_message", "payload": ["lobby", "hi"]},
        ]:
            reply = await ann.request(bad)
            assert reply["type"] == "error" and reply["code"] == "invalid_field", (bad, reply)
        await ann.send({"type": "chat_message", "payload": {"room": "lobby", "message": "hi"}})
        msg = await ann.recv()
        assert msg == {"type": "chat_message", "data": {"user_id": "ann", "message": "hi"}}
    assert manager.stats.handler_errors == 0  # no traceback in the log


async def test_readme_sample_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    """Run as a program, the sample serves until Ctrl-C, then exits 0 without a traceback
    (it once printed a 34-line ExceptionGroup around KeyboardInterrupt)."""
    from ..conftest import free_port

    port = free_port()
    script = tmp_path / "readme_sample.py"
    script.write_text(readme_sample().replace("port=3001", f"port={port}"))
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # Ctrl-C's default action, whatever this process inherited.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    out = b""
    try:
        with trio.fail_after(30):  # a deadlock guard: poll until the sample accepts connections
            while True:
                try:
                    await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    assert proc.returncode is None, "the sample exited"
                    await trio.sleep(0.05)
        async with connect(f"ws://127.0.0.1:{port}/?user=ann") as ws:
            assert json.loads(await ws.recv())["user_id"] == "ann"
            proc.send_signal(signal.SIGINT)
            with pytest.raises(ConnectionClosed) as info:
                with trio.fail_after(10):
                    await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        with trio.fail_after(20):
            while chunk := await proc.stdout.receive_some():
                out += chunk
            assert await proc.wait() == 0, out.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert b"Traceback" not in out and b"ExceptionGroup" not in out, out.decode()


async def test_chat_example_validates_its_input() -> None:
    manager = chat.build_app(host="127.0.0.1", port=0, heartbeat_interval=None)
    async with manager, client(manager, "/?user=ann") as ann:
        await ann.request({"type": "join_room", "room": "r"})
        for bad, code in [
            ({"type": "chat_message"}, "invalid_field"),
            ({"type": "chat_message", "payload": {"room": "r", "message": 5}}, "invalid_field"),
            ({"type": "chat_message", "payload": {"room": "r", "message": "  "}}, "invalid_field"),
            (
                {"type": "chat_message", "payload": {"room": "r", "message": "x" * 2001}},
                "too_large",
            ),
            ({"type": "chat_message", "payload": {"room": "s", "message": "x"}}, "not_in_room"),
        ]:
            reply = await ann.request(bad)
            assert reply["type"] == "error" and reply["code"] == code, (bad, reply)
        sent = await ann.request(
            {"type": "chat_message", "payload": {"room": "r", "message": "kept"}}
        )
        assert sent["data"]["message"] == "kept" and sent["position"]["offset"] == 1
        page = await ann.request({"type": "history", "room": "r"})
        assert [m["data"]["message"] for m in page["messages"]] == ["kept"]
        with pytest.raises(InvalidStatus) as info:
            async with connect(manager.url + "?user=bad%20name"):
                pass  # pragma: no cover
        assert info.value.response.status_code == 400


async def test_capability_server_setup() -> None:
    async with trio.open_nursery() as nursery:
        manager: WebSocketManager = await nursery.start(server_setup.main, 0)
        assert manager.options.max_connections == 10_000
        assert manager.options.heartbeat_interval == 30.0
        async with client(manager) as c:
            assert c.ws.protocol.extensions  # compression negotiated
        nursery.cancel_scope.cancel()


async def test_capability_connection_management() -> None:
    manager = connection_management.build_app(host="127.0.0.1", port=0, heartbeat_interval=None)
    async with manager:
        for headers, status in [({}, 401), ({"Authorization": "Bearer nope"}, 401)]:
            with pytest.raises(InvalidStatus) as info:
                async with connect(manager.url, additional_headers=headers):
                    pass  # pragma: no cover
            assert info.value.response.status_code == status
        async with client(manager, additional_headers={"Authorization": "Bearer token-ann"}) as c:
            assert c.welcome is not None and c.welcome["user_id"] == "ann"
            assert await c.recv() == {"type": "welcome", "message": "Connected successfully"}
            assert [m.user_id for m in manager.members_of("user:ann")] == ["ann"]
        await wait_until(lambda: not manager.rooms)


async def test_capability_broadcasting() -> None:
    manager = WebSocketManager(host="127.0.0.1", port=0, heartbeat_interval=None)
    async with (
        manager,
        client(manager) as user123,
        client(manager) as staff,
        client(manager) as other,
    ):
        await user123.request({"type": "join_room", "room": "user:123"})
        await staff.request({"type": "join_room", "room": "admin"})
        await staff.request({"type": "join_room", "room": "moderator"})
        await broadcasting.announce(manager)
        assert (await user123.recv())["type"] == "system_announcement"
        assert (await user123.recv())["type"] == "notification"
        assert (await staff.recv())["type"] == "system_announcement"
        assert (await staff.recv())["type"] == "alert"  # once, though in both rooms
        assert (await other.recv())["type"] == "system_announcement"
        for c in (user123, staff, other):
            assert await c.request({"type": "ping"}) == {"type": "pong"}


async def test_capability_message_handling() -> None:
    manager = message_handling.build_app(host="127.0.0.1", port=0, heartbeat_interval=None)
    async with (
        manager,
        client(manager, "/?user=ann") as ann,
        client(manager, "/?user=bob") as bob,
    ):
        reply = await ann.request({"type": "query", "payload": {"table": "posts"}})
        assert reply == {"type": "query_result", "table": "posts", "rows": []}
        reply = await bob.request({"type": "query", "payload": {"table": "posts"}})
        assert reply["code"] == "not_permitted" and reply["message"] == "Insufficient permissions"
        reply = await bob.request({"type": "query", "payload": {}})
        assert reply["code"] == "invalid_field"
        await bob.request({"type": "join_room", "room": "r"})
        # Only members write to a room; bad payloads get validation errors.
        chat = {"type": "chat_message", "payload": {"room": "r", "message": "yo"}}
        assert (await ann.request(chat))["code"] == "not_in_room"
        await ann.request({"type": "join_room", "room": "r"})
        for bad in [
            {"type": "chat_message"},
            {"type": "chat_message", "payload": {}},
            {"type": "chat_message", "payload": {"room": "r"}},
            {"type": "chat_message", "payload": {"room": "r", "message": 5}},
        ]:
            reply = await ann.request(bad)
            assert reply["type"] == "error" and reply["code"] == "invalid_field", (bad, reply)
        await ann.send(chat)
        assert (await bob.recv())["data"] == {"user_id": "ann", "message": "yo"}
        assert (await ann.recv())["data"] == {"user_id": "ann", "message": "yo"}
        assert manager.stats.handler_errors == 0
        reply = await ann.request({"type": "subscribe", "payload": {"table": "posts"}})
        assert reply["code"] == "invalid_field" and "table" in reply["message"]


async def test_capability_room_management() -> None:
    manager = await room_management.build_app(host="127.0.0.1", port=0, heartbeat_interval=None)
    room = manager.get_room("chat:general")
    assert room is not None and room.max_users == 100 and room.persistent
    assert room.moderators == {"admin", "moderator"}
    async with manager:
        async with client(manager, "/?user=ann") as ann:
            for bad, code in [
                ({"type": "chat_message", "payload": {"room": "chat:general", "message": "x"}},
                 "not_in_room"),
                ({"type": "chat_message", "payload": ["chat:general"]}, "invalid_field"),
                ({"type": "chat_message", "payload": {"room": "chat:general"}}, "invalid_field"),
            ]:  # fmt: skip
                reply = await ann.request(bad)
                assert reply["type"] == "error" and reply["code"] == code, (bad, reply)
            assert manager.stats.handler_errors == 0
            await ann.request({"type": "join_room", "room": "chat:general"})
            await ann.send(
                {"type": "chat_message", "payload": {"room": "chat:general", "message": "hello"}}
            )
            msg = await ann.recv()
            assert msg["data"]["user_id"] == "ann" and msg["data"]["message"] == "hello"
            assert (await ann.request({"type": "leave_room", "room": "chat:general"}))[
                "type"
            ] == "room_left"
        assert "chat:general" in manager.rooms  # persistent: kept while empty


async def test_capability_error_handling_server_and_reconnecting_client() -> None:
    from trio_rt_examples.capabilities import error_handling

    manager = error_handling.build_app(host="127.0.0.1", port=0, heartbeat_interval=None)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.serve)
        port = manager.port
        client_ = error_handling.make_client(manager.url)
        assert client_ is not None
        async with client_ as c:
            await c.wait_connected()
            await c.join_room("news")
            await c.send({"type": "fragile"})
            reply = await c.receive()
            assert reply["type"] == "error" and reply["code"] == "internal_error"
            # the server restarts; the client reconnects by itself and rejoins its room
            manager.stop()
            await wait_until(lambda: c.state.name != "CONNECTED")
            again = error_handling.build_app(host="127.0.0.1", port=port, heartbeat_interval=None)
            await nursery.start(again.serve)
            with trio.fail_after(30):
                await c.wait_connected()
            await wait_until(lambda: len(again.members_of("news")) == 1)
            await again.broadcast_to_room("news", {"type": "after_restart"})
            assert (await c.receive())["type"] == "after_restart"
            again.stop()


async def test_capability_scalability(redis_url: str) -> None:
    from trio_rt_examples.capabilities import scalability

    apps = [
        scalability.build_app(redis_url, host="127.0.0.1", port=0, heartbeat_interval=None)
        for _ in range(2)
    ]
    async with apps[0], apps[1]:
        async with (
            scalability.sticky_registry(redis_url, apps[0], apps[0].url) as r0,
            scalability.sticky_registry(redis_url, apps[1], apps[1].url) as r1,
        ):
            await wait_until(lambda: len(r0.servers) == 2 and len(r1.servers) == 2, limit=20)
            owners = {await r0.owner(f"user:{i}") for i in range(50)}
            assert {o[0] for o in owners if o} == {apps[0].server_id, apps[1].server_id}
            assert await r0.owner("user:7") == await r1.owner("user:7")
        async with client(apps[0]) as a, client(apps[1]) as b:
            for c in (a, b):
                await c.request({"type": "join_room", "room": "everyone"})
            await apps[1].broadcast_to_room("everyone", {"type": "hello"})
            assert (await a.recv())["type"] == "hello" and (await b.recv())["type"] == "hello"
            await apps[0].send_to_servers({"type": "announce", "text": "maintenance"})
            assert await b.recv() == {"type": "announcement", "text": "maintenance"}


async def test_capability_change_streams(session: Any, keyspace: str) -> None:
    import uuid

    from trio_rt_examples.capabilities import change_streams

    manager, _, db = await change_streams.build(session, keyspace)
    async with manager, client(manager, "/?user=ann") as ann, client(manager) as anonymous:
        await ann.request({"type": "join_room", "room": "category:news"})
        await ann.request({"type": "join_room", "room": "user:ann"})
        sub = await ann.request(
            {"type": "subscribe", "table": "posts", "filters": {"score": {"gt": 5}}}
        )
        assert sub["type"] == "subscribed"
        denied = await anonymous.request({"type": "subscribe", "table": "posts"})
        assert denied["code"] == "not_permitted"
        post = {"id": uuid.uuid4(), "category": "news", "author": "bob", "title": "t", "score": 9}
        await db.insert(change_streams.posts, post)
        got = {(m := await ann.recv())["type"]: m for _ in range(2)}
        assert got["post_update"]["operation"] == "insert"
        assert got["post_update"]["data"]["id"] == str(post["id"])
        assert got["data_update"]["event"]["data"]["score"] == 9
        await db.insert(
            change_streams.user_notifications,
            {"user_id": "ann", "id": uuid.uuid1(), "text": "hello"},
        )
        note = await ann.recv()
        assert note["type"] == "notification" and note["data"]["text"] == "hello"


async def test_chat_web_ui_routes_and_dev_tokens() -> None:
    from .test_browser_client import http_get

    manager = chat.build_app(host="127.0.0.1", port=0, heartbeat_interval=None)
    async with manager:
        status, headers, body = await http_get(manager, "/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b'src="/demo/app.js"' in body
        status, headers, body = await http_get(manager, "/demo/app.js")
        assert status == 200 and b'from "/trio_rt.js"' in body
        status, _, body = await http_get(manager, "/token?name=bad%20name")
        assert status == 400
        status, _, body = await http_get(manager, "/token?name=ann")
        assert status == 200
        token = json.loads(body)["token"]
        # The token authenticates as a subprotocol entry; the server selects trio_rt.v1 only.
        async with connect(
            manager.url, subprotocols=[Subprotocol("trio_rt.v1"), Subprotocol(f"bearer.{token}")]
        ) as ws:
            welcome = json.loads(await ws.recv())
            assert welcome["user_id"] == "ann"
            assert ws.subprotocol == "trio_rt.v1"
        # A bad token is refused; no token falls back to the demo's ?user= name.
        with pytest.raises(InvalidStatus) as info:
            async with connect(
                manager.url,
                subprotocols=[Subprotocol("trio_rt.v1"), Subprotocol("bearer." + token[:-4])],
            ):
                pass  # pragma: no cover
        assert info.value.response.status_code == 401
        async with client(manager, "/?user=bob") as bob:
            assert bob.welcome is not None and bob.welcome["user_id"] == "bob"
            await bob.request({"type": "join_room", "room": "chat:general"})
            status, _, body = await http_get(manager, "/demo/rooms")
            assert json.loads(body) == {"rooms": [{"name": "chat:general", "members": 1}]}
            status, _, body = await http_get(manager, "/demo/stats")
            stats = json.loads(body)
            assert stats["connections"] == 1 and stats["server_id"] == manager.server_id
        status, _, body = await http_get(manager, "/demo/config")
        config = json.loads(body)
        assert config["posts"] is False and config["tokens"] is True
        assert config["off"] == [web_ui.POSTS_OFF]  # the dev tokens are on here
        assert config["name_rule"] == web_ui.NAME_RULE


async def test_the_pages_polling_is_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    """The page polls /demo/stats every 2 s: plain HTTP answers are DEBUG lines, not INFO."""
    from .test_browser_client import http_get

    manager = chat.build_app(host="127.0.0.1", port=0, heartbeat_interval=None)
    with caplog.at_level(logging.DEBUG, logger="trio_rt"):
        async with manager:
            for _ in range(3):
                assert (await http_get(manager, "/demo/stats"))[0] == 200
            async with client(manager, "/?user=ann"):
                pass
    http = [r for r in caplog.records if r.name == "trio_rt.websockets"]
    sent = [r for r in http if r.getMessage() == "HTTP response sent (200 OK)"]
    assert len(sent) == 3 and {r.levelno for r in sent} == {logging.DEBUG}
    info = [r.getMessage() for r in http if r.levelno >= logging.INFO]
    # What is left at INFO: the server itself and the WebSocket connection.
    assert "HTTP response sent (200 OK)" not in info and "connection open" in info
    assert info.count("connection closed") == 1  # the WebSocket's; the 3 GETs' are DEBUG


async def test_getting_started_samples(capsys: pytest.CaptureFixture[str]) -> None:
    from trio_rt_examples import getting_started

    manager = getting_started.build_server(host="127.0.0.1", port=0, heartbeat_interval=None)
    async with manager, client(manager, "/?user=ann") as ann:
        for bad, code in [
            ({"type": "say", "room": "lobby", "text": "hi"}, "not_in_room"),
            ({"type": "say"}, "invalid_field"),
            ({"type": "say", "room": "lobby", "text": 5}, "invalid_field"),
        ]:
            reply = await ann.request(bad)
            assert reply["type"] == "error" and reply["code"] == code, (bad, reply)
        assert manager.stats.handler_errors == 0

    await getting_started.main(port=0)
    assert "{'type': 'said', 'user': 'ann', 'text': 'hello'}" in capsys.readouterr().out
    heard = await getting_started.two_servers()
    assert heard == [{"type": "said", "user": "ann", "text": "hello"}] * 2


async def test_demo_posts_board_on_cassandra(
    cassandra_endpoint: Any, session: Any, keyspace: str
) -> None:
    endpoint = f"{cassandra_endpoint.host}:{cassandra_endpoint.port}"
    manager = chat.build_app(
        cassandra=endpoint, keyspace=keyspace, host="127.0.0.1", port=0, heartbeat_interval=None
    )
    async with manager, client(manager, "/?user=ann") as ann, client(manager, "/?user=bob") as bob:
        sub = await bob.request({"type": "subscribe", "table": "posts", "id": 1})
        assert sub["type"] == "subscribed"
        for bad, code in [
            ({"type": "new_post"}, "invalid_field"),
            ({"type": "new_post", "title": "  "}, "invalid_field"),
            ({"type": "new_post", "title": "x" * 201}, "too_large"),
        ]:
            reply = await ann.request(bad)
            assert reply["type"] == "error" and reply["code"] == code, (bad, reply)
        await ann.send({"type": "new_post", "title": " hello "})
        update = await bob.recv()
        assert update["type"] == "data_update" and update["event"]["operation"] == "insert"
        assert update["event"]["data"]["title"] == "hello"
        assert update["event"]["data"]["author"] == "ann"


async def test_capability_authentication_and_authorization() -> None:
    import time

    import jwt
    from trio_rt_examples.capabilities import authentication

    secret = "s" * 32
    manager = await authentication.build_app(
        secret, host="127.0.0.1", port=0, heartbeat_interval=None, rate_limit=6
    )

    def bearer(user: str, exp: float = 60) -> dict[str, str]:
        token = jwt.encode({"userId": user, "exp": time.time() + exp}, secret, algorithm="HS256")
        return {"Authorization": f"Bearer {token}"}

    async with manager:
        for headers in [{}, {"Authorization": "Bearer nope"}, bearer("ann", exp=-120)]:
            with pytest.raises(InvalidStatus) as info:
                async with connect(manager.url, additional_headers=headers):
                    pass  # pragma: no cover
            assert info.value.response.status_code == 401
        async with (
            client(manager, additional_headers=bearer("ann")) as ann,
            client(manager, additional_headers=bearer("bob")) as bob,
        ):
            assert ann.welcome is not None and ann.welcome["user_id"] == "ann"
            # the private room: ann is granted `join`, bob is not
            assert (await ann.request({"type": "join_room", "room": "staff"}))["type"] == (
                "room_joined"
            )
            assert (await bob.request({"type": "join_room", "room": "staff"}))["code"] == (
                "not_permitted"
            )
            chat = {"type": "chat_message", "payload": {"room": "staff", "message": "hi"}}
            assert (await bob.request(chat))["code"] == "not_in_room"
            assert (await ann.request(chat))["data"] == {"user_id": "ann", "message": "hi"}
            query = {"type": "query", "table": "payroll"}
            assert (await ann.request(query))["type"] == "query_result"
            assert (await bob.request(query))["message"] == "Insufficient permissions"
            # per-user rate limit: bob has spent 3 of his 6; 3 more pass, then refused
            for _ in range(3):
                assert (await bob.request({"type": "ping"}))["type"] == "pong"
            refused = await bob.request({"type": "ping"})
            assert refused["code"] == "rate_limited" and refused["retry_after"] > 0


async def test_capability_performance_monitoring(caplog: pytest.LogCaptureFixture) -> None:
    from trio_rt_examples.capabilities import monitoring

    from .test_browser_client import http_get

    manager, metrics = monitoring.build_app(
        host="127.0.0.1", port=0, heartbeat_interval=None, prometheus_port=0, interval=3600
    )
    with caplog.at_level(logging.INFO, logger="examples.capabilities.monitoring"):
        async with manager, metrics, client(manager) as c:
            await c.request({"type": "join_room", "room": "r"})
            lines = monitoring.stats_lines(metrics)
            assert lines[0] == "Active connections: 1" and lines[2] == "Rooms: 1"
            assert lines[1].startswith("Messages/sec: ") and lines[3].endswith("MB")
            host, port = metrics.prometheus_address("/ws-metrics")
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(
                    b"GET /ws-metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                scraped = b""
                while chunk := await stream.receive_some():
                    scraped += chunk
            assert b" 200 " in scraped.split(b"\r\n")[0]
            assert b"trio_rt_connections" in scraped
            status, _, body = await http_get(manager, "/metrics")
            assert status == 200 and b"trio_rt_" in body
    reports = [
        r.getMessage() for r in caplog.records if r.name == "examples.capabilities.monitoring"
    ]
    assert reports and reports[0].startswith("WebSocket Stats: Active connections: 0")


# The sections of the capability list trio_rt started from (shared notes:
# seed/websocket-integration.md), less its overview.
CAPABILITY_SECTIONS = [
    "WebSocket Server Setup",
    "Connection Management",
    "Real-time Data Broadcasting",
    "Database Change Notifications",
    "Message Handling",
    "Room Management",
    "Authentication and Authorization",
    "Scalability and Load Balancing",
    "Error Handling and Reconnection",
    "Performance Monitoring",
]


def test_capability_readme_maps_every_section_to_a_module_that_a_test_runs() -> None:
    capabilities = ROOT / "examples" / "capabilities"
    readme = (capabilities / "README.md").read_text()
    rows = re.findall(r"^\| ([^|]+?) \| \[`(\w+\.py)`\]", readme, re.M)
    mapped = {section: module for section, module in rows}
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    for section in CAPABILITY_SECTIONS:
        assert section in mapped, f"examples/capabilities/README.md has no row for {section!r}"
        module = capabilities / mapped[section]
        assert module.is_file(), module
        assert f'Capability section "{section}"' in module.read_text().split('"""')[1], module
        assert re.search(rf"\b{module.stem}\b", tests), f"no test runs {module.name}"
    # every module of examples/capabilities/ is in the table
    listed = set(mapped.values())
    assert {p.name for p in capabilities.glob("*.py") if p.name != "__init__.py"} == listed

"""Every example runs here: README's sample, examples/chat.py and examples/seed/*."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_rt_examples import chat, web_ui
from trio_rt_examples.seed import (
    broadcasting,
    connection_management,
    message_handling,
    room_management,
    server_setup,
)
from websockets.exceptions import InvalidStatus
from websockets.trio.client import connect
from websockets.typing import Subprotocol

from trio_rt import WebSocketManager

from .conftest import client, wait_until

ROOT = Path(__file__).resolve().parent.parent


async def test_readme_sample_runs() -> None:
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code is not None
    source = code.group(1).replace("port=3001", "port=0").replace("trio.run(main)", "")
    namespace: dict[str, Any] = {}
    exec(compile(source, "README.md", "exec"), namespace)
    manager: WebSocketManager = namespace["manager"]
    async with manager, client(manager, "/?user=ann") as ann:
        assert ann.welcome is not None and ann.welcome["user_id"] == "ann"
        await ann.request({"type": "join_room", "room": "lobby"})
        await ann.send({"type": "chat_message", "payload": {"room": "lobby", "message": "hi"}})
        msg = await ann.recv()
        assert msg == {"type": "chat_message", "data": {"user_id": "ann", "message": "hi"}}


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


async def test_seed_server_setup() -> None:
    async with trio.open_nursery() as nursery:
        manager: WebSocketManager = await nursery.start(server_setup.main, 0)
        assert manager.options.max_connections == 10_000
        assert manager.options.heartbeat_interval == 30.0
        async with client(manager) as c:
            assert c.ws.protocol.extensions  # compression negotiated
        nursery.cancel_scope.cancel()


async def test_seed_connection_management() -> None:
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


async def test_seed_broadcasting() -> None:
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


async def test_seed_message_handling() -> None:
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
        await ann.send({"type": "chat_message", "payload": {"room": "r", "message": "yo"}})
        assert (await bob.recv())["data"] == {"user_id": "ann", "message": "yo"}
        reply = await ann.request({"type": "subscribe", "payload": {"table": "posts"}})
        assert reply["code"] == "invalid_field" and "table" in reply["message"]


async def test_seed_room_management() -> None:
    manager = await room_management.build_app(host="127.0.0.1", port=0, heartbeat_interval=None)
    room = manager.get_room("chat:general")
    assert room is not None and room.max_users == 100 and room.persistent
    assert room.moderators == {"admin", "moderator"}
    async with manager:
        async with client(manager, "/?user=ann") as ann:
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


async def test_seed_error_handling_server_and_reconnecting_client() -> None:
    from trio_rt_examples.seed import error_handling

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


async def test_seed_scalability(redis_url: str) -> None:
    import trio_asyncio
    from trio_rt_examples.seed import scalability

    apps = [
        scalability.build_app(redis_url, host="127.0.0.1", port=0, heartbeat_interval=None)
        for _ in range(2)
    ]
    async with trio_asyncio.open_loop(), apps[0], apps[1]:
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


async def test_seed_change_streams(session: Any, keyspace: str) -> None:
    import uuid

    from trio_rt_examples.seed import change_streams

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

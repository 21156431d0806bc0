"""Every code sample of the older docs/ pages runs here: examples/docs/*.py (one module per page,
included in the pages by pymdownx.snippets sections) and examples/prometheus/*.yml.

Servers listen on port 0; Redis and Cassandra samples run against the real servers of the
project's fixtures. tests/integration/test_docs.py checks that the pages include their code from
files like these instead of inline blocks.
"""

from __future__ import annotations

import ast
import inspect
import json
import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
import yaml
from trio_rt_examples import chat
from trio_rt_examples.docs import (
    client_samples,
    deployment_samples,
    development_samples,
    operations_samples,
    rooms_samples,
    security_samples,
    server_samples,
)
from websockets.exceptions import InvalidStatus
from websockets.trio.client import connect

from trio_rt import Connection, HttpResponse, MemoryHub, ServerOptions, WebSocketManager
from trio_rt.client import ClientState, WebSocketClient, default_is_fatal
from trio_rt.testing.services import CassandraEndpoint, redis_ping

from ..conftest import client, wait_until
from ..engine.test_metrics import scrape
from .test_browser_client import http_get

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def section(path: Path, name: str) -> str:
    """The text of snippet section `name` of `path`, as the page shows it (dedented)."""
    lines = path.read_text().splitlines()
    start = lines.index(next(x for x in lines if x.strip() == f"# --8<-- [start:{name}]"))
    end = lines.index(next(x for x in lines if x.strip() == f"# --8<-- [end:{name}]"))
    body = [x for x in lines[start + 1 : end] if "--8<--" not in x]
    indent = min(len(x) - len(x.lstrip()) for x in body if x.strip())
    return "\n".join(x[indent:] for x in body) + "\n"


def test_every_included_section_exists_and_parses() -> None:
    """Every Python section a page includes is well-formed on its own (so the page shows code
    that reads as code), and every section a page names exists."""
    checked = set()
    for page in sorted((ROOT / "docs").glob("*.md")):
        includes = re.findall(r'^--8<-- "(examples/[^":]+\.py):([^"]+)"$', page.read_text(), re.M)
        for path, name in includes:
            text = section(ROOT / path, name)
            # a fragment may use `await` / `async for` at the top level, as in a REPL
            compile(text, f"{path}:{name}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            checked.add(Path(path).name)
    assert {f"{p}_samples.py" for p in ("rooms", "server", "client", "cassandra")} <= checked


# -- docs/server.md ------------------------------------------------------------------------------
async def test_server_serves_in_a_block_and_shuts_down_when_it_ends() -> None:
    host, port = await server_samples.serve_in_a_block(host="127.0.0.1", port=0)
    assert host == "127.0.0.1" and port > 0  # port 0: the real port is reported
    with pytest.raises(OSError):  # leaving the block closed the listener
        await trio.open_tcp_stream(host, port)


async def test_server_serves_in_a_nursery_until_stop() -> None:
    manager = WebSocketManager(host="127.0.0.1", port=0, heartbeat_interval=None)
    host, port = await server_samples.serve_in_a_nursery(manager)  # returns: stop() ended serve
    assert port > 0
    with pytest.raises(OSError):
        await trio.open_tcp_stream(host, port)


async def test_server_handlers_each_run_as_documented() -> None:
    manager = WebSocketManager(host="127.0.0.1", port=0, heartbeat_interval=None)
    log: list[tuple[Any, ...]] = []
    server_samples.register_handlers(manager, log)
    async with manager:
        with pytest.raises(InvalidStatus) as info:  # Reject in the connection handler
            async with connect(manager.url + "?user=mallory"):
                pass  # pragma: no cover
        assert info.value.response.status_code == 403
        async with client(manager, "/?user=ann") as ann, client(manager, "/?user=bob") as bob:
            await bob.request({"type": "join_room", "room": "r"})
            await ann.send({"type": "move", "n": 1})
            await ann.send({"type": "other", "n": 2})
            not_member = await ann.request({"type": "chat", "room": "r", "text": "hi"})
            assert not_member["type"] == "error" and not_member["code"] == "not_in_room"
            await ann.request({"type": "join_room", "room": "r"})
            await ann.send({"type": "chat", "room": "r", "text": "hi"})
            bad_room = await ann.request({"type": "chat", "room": 5})
            assert bad_room["type"] == "error" and bad_room["code"] == "invalid_field"
            boom = await ann.request({"type": "boom"})
            assert boom["type"] == "error" and boom["code"] == "internal_error"
            heard = await bob.recv()
            assert heard["type"] == "chat" and heard["text"] == "hi"
            assert log == [
                ("move", "ann", {"type": "move", "n": 1}),
                ("fallback", "ann", {"type": "other", "n": 2}),
                ("error", "ann", "RuntimeError('boom')"),
            ]
        await wait_until(lambda: len(log) == 7)
        kinds = ("disconnect", "disconnect (event spelling)")
        assert sorted(log[3:]) == sorted((k, u, 1000) for k in kinds for u in ("ann", "bob"))


# -- docs/rooms.md -------------------------------------------------------------------------------
async def test_rooms_api_tour() -> None:
    manager, seen = rooms_samples.rooms_app(host="127.0.0.1", port=0, heartbeat_interval=None)
    async with manager, client(manager, "/?user=bob") as bob:
        await bob.send({"type": "rooms_tour"})
        with trio.fail_after(10):
            while (msg := await bob.recv())["type"] != "room_kicked":
                pass
        assert msg["room"] == "chat:general" and msg["by"] == "admin"
        assert await bob.request({"type": "ping"}) == {"type": "pong"}  # the tour has ended
        [result] = seen
        assert result["rooms"] == frozenset({"chat:general"})
        assert [m.user_id for m in result["members"]] == ["bob"]
        assert result["exists"] is False and manager.get_room("chat:general") is None


async def test_rooms_broadcasts_reach_each_member_once() -> None:
    manager = rooms_samples.broadcast_app(host="127.0.0.1", port=0, heartbeat_interval=None)
    async with (
        manager,
        client(manager) as sender,
        client(manager) as member,
        client(manager) as bystander,
    ):
        for room in ("lobby", "r1", "r2"):
            await sender.request({"type": "join_room", "room": room})
            await member.request({"type": "join_room", "room": room})
        await sender.send({"type": "fan_out", "text": "x"})
        news = {"type": "news", "text": "x"}
        # the sender is excluded from the first two, and gets the multi-room one once
        assert await sender.recv() == news
        assert await sender.request({"type": "ping"}) == {"type": "pong"}
        assert [await member.recv() for _ in range(3)] == [news] * 3  # r1 + r2: once
        assert await member.request({"type": "ping"}) == {"type": "pong"}
        assert await bystander.recv() == news  # only the server-wide broadcast
        assert await bystander.request({"type": "ping"}) == {"type": "pong"}


async def test_rooms_cross_server_messages_reach_the_other_servers_only() -> None:
    hub = MemoryHub()
    heard_a: list[tuple[dict[str, Any], str]] = []
    heard_b: list[tuple[dict[str, Any], str]] = []
    a = rooms_samples.servers_sharing(hub, heard_a)
    b = rooms_samples.servers_sharing(hub, heard_b)
    async with a, b:
        await rooms_samples.reload_everywhere(a)
        await wait_until(lambda: bool(heard_b))
        assert heard_b == [({"type": "reload", "what": "config"}, a.server_id)]
        await b.send_to_servers({"type": "from_b"})
        await wait_until(lambda: bool(heard_a))
        # a's own message would have come first: it never did
        assert heard_a == [({"type": "from_b"}, b.server_id)]


async def _two_servers_share_a_room(m1: WebSocketManager, m2: WebSocketManager) -> None:
    async with m1, m2, client(m1) as a, client(m2) as b:
        for c in (a, b):
            await c.request({"type": "join_room", "room": "lobby"})
        await m1.broadcast_to_room("lobby", {"type": "hello"})
        assert await a.recv() == {"type": "hello"} and await b.recv() == {"type": "hello"}


async def test_rooms_redis_broker(redis_url: str) -> None:
    await _two_servers_share_a_room(
        rooms_samples.on_redis(redis_url, port=0), rooms_samples.on_redis(redis_url, port=0)
    )


async def test_rooms_redis_cluster_broker(redis_cluster_nodes: list[str]) -> None:
    url = f"redis://{redis_cluster_nodes[0]}"
    await _two_servers_share_a_room(
        rooms_samples.on_redis_cluster(url, port=0), rooms_samples.on_redis_cluster(url, port=0)
    )


# -- docs/client.md ------------------------------------------------------------------------------
async def test_client_quickstart(capsys: pytest.CaptureFixture[str]) -> None:
    manager = chat.build_app(host="127.0.0.1", port=0, heartbeat_interval=None)
    async with manager:
        await client_samples.quickstart(manager.url + "?user=ann")
        assert capsys.readouterr().out == "hi\n"
        await wait_until(lambda: not manager.connections)  # the block closed the client


def test_client_constructor_sample_lists_every_option_at_its_default() -> None:
    text = section(EXAMPLES / "docs" / "client_samples.py", "constructor")
    call = ast.parse(text).body[0].value  # type: ignore[attr-defined]
    assert isinstance(call, ast.Call)
    shown = {
        kw.arg: eval(compile(ast.Expression(kw.value), "sample", "eval"), {**vars(client_samples)})
        for kw in call.keywords
    }
    params = inspect.signature(WebSocketClient).parameters
    defaults = {n: p.default for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
    assert shown == defaults
    assert shown["is_fatal"] is default_is_fatal
    built = client_samples.with_every_default("ws://127.0.0.1:1/")
    assert built.state is ClientState.CONNECTING  # built, not started


async def test_client_event_listener_logs_a_lost_server(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="app")

    def lost() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "app"]

    async with trio.open_nursery() as nursery:
        manager = WebSocketManager(host="127.0.0.1", port=0, heartbeat_interval=None)
        await nursery.start(manager.serve)

        async def work(c: WebSocketClient) -> None:
            await c.wait_connected()
            manager.stop()  # graceful shutdown: close code 1001
            await wait_until(lambda: bool(lost()))

        await client_samples.with_a_listener(manager.url, work)
    assert lost() == ["lost the server: 1001 server shutting down"]


# -- docs/security.md ----------------------------------------------------------------------------
SECRET = "docs-sample-secret-" + "x" * 48  # long enough for HS256 without pyjwt's warning


def hs_token(**claims: Any) -> str:
    payload = {"sub": "ann", "aud": "chat", "iss": "https://id.example", "exp": time.time() + 60}
    return jwt.encode({**payload, **claims}, SECRET, algorithm="HS256")


async def test_security_jwt_authenticates_the_handshake() -> None:
    manager = security_samples.authenticated_server(SECRET, port=0)
    async with manager:
        headers = {"Authorization": f"Bearer {hs_token()}"}
        async with client(manager, additional_headers=headers) as c:
            assert c.welcome is not None and c.welcome["user_id"] == "ann"
        for bad in ({}, {"Authorization": f"Bearer {hs_token(aud='other')}"}):
            with pytest.raises(InvalidStatus) as info:
                async with connect(manager.url, additional_headers=bad):
                    pass  # pragma: no cover
            assert info.value.response.status_code == 401


async def test_security_jwks_keys_from_a_url() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    provider = WebSocketManager(host="127.0.0.1", port=0, heartbeat_interval=None)

    @provider.route("/.well-known/jwks.json")
    def jwks(request: Any) -> HttpResponse:
        return HttpResponse.json(200, {"keys": [{**jwk, "kid": "k1"}]})

    async with provider:
        url = f"http://127.0.0.1:{provider.port}/.well-known/jwks.json"
        auth = security_samples.jwks_authenticator(url)
        manager = WebSocketManager(host="127.0.0.1", port=0, heartbeat_interval=None, auth=auth)
        claims = {"sub": "bob", "aud": "chat", "exp": time.time() + 60}
        token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
        async with manager:
            headers = {"Authorization": f"Bearer {token}"}
            async with client(manager, additional_headers=headers) as c:
                assert c.welcome is not None and c.welcome["user_id"] == "bob"
            wrong = jwt.encode(
                {**claims, "aud": "x"}, key, algorithm="RS256", headers={"kid": "k1"}
            )
            with pytest.raises(InvalidStatus) as info:
                async with connect(
                    manager.url, additional_headers={"Authorization": f"Bearer {wrong}"}
                ):
                    pass  # pragma: no cover
            assert info.value.response.status_code == 401


async def test_security_permission_store_answers_authorize() -> None:
    manager = await security_samples.permission_server(port=0)
    async with manager:
        # The sample restricts a private room: ann (granted) joins it, bob does not.
        async with client(manager, "/?user=ann") as ann, client(manager, "/?user=bob") as bob:
            assert (await ann.request({"type": "join_room", "room": "vip"}))[
                "type"
            ] == "room_joined"
            refused = await bob.request({"type": "join_room", "room": "vip"})
            assert refused["code"] == "not_permitted", refused
            # A public room is not checked: a `join` grant there would change nothing.
            assert (await bob.request({"type": "join_room", "room": "lobby"}))[
                "type"
            ] == "room_joined"
        for user, resource, action, allowed in [
            ("ann", "room:vip", "join", True),
            ("ann", "room:vip", "broadcast", True),
            ("ann", "room:vip", "moderate", False),
            ("mod", "room:lobby", "moderate", True),
            ("mod", "room:vip", "join", False),
            (None, "table:public", "read", True),  # "*": anonymous included
            ("ann", "table:public", "read", True),
            ("ann", "table:posts", "read", False),
        ]:
            path = "/" if user is None else f"/?user={user}"
            async with client(manager, path) as c:
                reply = await c.request({"type": "may", "resource": resource, "action": action})
                assert reply == {"type": "may", "allowed": allowed}, (user, resource, action)


# -- docs/operations.md --------------------------------------------------------------------------
def prometheus_file(name: str) -> Any:
    return yaml.safe_load((EXAMPLES / "prometheus" / name).read_text())


async def test_operations_metrics_and_the_prometheus_files(
    capsys: pytest.CaptureFixture[str],
) -> None:
    scrape_config = prometheus_file("prometheus.yml")["scrape_configs"][0]
    exposed: set[str] = set()

    async def check(manager: WebSocketManager, metrics: Any) -> None:
        @manager.on_message("x")
        async def x(conn: Connection, message: dict[str, Any]) -> None:
            await manager.broadcast({"type": "y"})

        async with client(manager) as c:  # a handler call and a broadcast: every histogram
            await c.send({"type": "x"})
            assert await c.recv() == {"type": "y"}
            path = scrape_config["metrics_path"]
            _, families = await scrape(f"http://127.0.0.1:{manager.port}{path}")
            host, port = metrics.prometheus_address("/ws-metrics")
            samples, _ = await scrape(f"http://{host}:{port}/ws-metrics")
        assert ("trio_rt_connections", frozenset({("server_id", manager.server_id)})) in samples
        for name in families:  # the series names an expression can use
            exposed.update(
                {name, f"{name}_total", f"{name}_bucket", f"{name}_count", f"{name}_sum"}
            )

    await operations_samples.monitored_server(
        host="127.0.0.1", port=0, prometheus_port=0, check=check
    )
    connections, rate, rss = capsys.readouterr().out.split()
    assert connections == "0" and float(rate) == 0.0 and float(rss) > 0
    assert scrape_config["job_name"] == "trio_rt"

    rules = [rule for group in prometheus_file("alerts.yml")["groups"] for rule in group["rules"]]
    alerts_text = (EXAMPLES / "prometheus" / "alerts.yml").read_text()
    assert len(rules) == alerts_text.count("- alert:") > 0  # none lost to the indentation
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "annotations"} and rule["alert"], rule
        assert re.fullmatch(r"\d+m", rule["for"]), rule
        names = set(re.findall(r"\btrio_rt_[a-z_]+", rule["expr"]))
        assert names and names <= exposed, (rule["alert"], names - exposed)
    outbox = next(r for r in rules if r["alert"] == "TrioRtOutboxesBackingUp")
    assert outbox["expr"].split(">")[1].strip() == str(ServerOptions().outbox_size // 2)


# -- docs/deployment.md --------------------------------------------------------------------------
async def test_deployment_servers_share_rooms_through_redis(redis_url: str) -> None:
    web = [deployment_samples.web_server(f"web-{i}", 0, redis_url) for i in (1, 2, 3)]
    async with web[0], web[1], web[2]:
        for i, server in enumerate(web, 1):
            status, _, body = await http_get(server, "/health")
            assert status == 200 and json.loads(body)["server_id"] == f"web-{i}"
        async with client(web[0]) as a, client(web[2]) as c:
            for x in (a, c):
                await x.request({"type": "join_room", "room": "lobby"})
            await web[1].broadcast_to_room("lobby", {"type": "hi"})
            assert await a.recv() == {"type": "hi"} and await c.recv() == {"type": "hi"}


async def test_deployment_registry_knows_the_server(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    address = "ws://127.0.0.1:3001"
    await deployment_samples.main(redis_url, port=0, address=address, serve_forever=False)
    live, owner, cached = (ast.literal_eval(line) for line in capsys.readouterr().out.splitlines())
    assert live["web-1"] == address
    assert owner == cached and owner in live.items()


# -- docs/development.md -------------------------------------------------------------------------
def test_development_starts_redis_and_a_cluster() -> None:
    seen: list[Any] = []

    def use(service: Any) -> None:
        if hasattr(service, "addresses"):
            nodes = [a.rpartition(":") for a in service.addresses]
            seen.append([redis_ping(host, int(port)) for host, _, port in nodes])
        else:
            assert service.url == f"redis://{service.host}:{service.port}/0"
            seen.append(redis_ping(service.host, service.port))
        seen.append(service)

    development_samples.with_redis(use)
    development_samples.with_redis_cluster(use)
    assert seen[0] is True and seen[2] == [True, True, True]
    redis, cluster = seen[1], seen[3]
    assert not redis_ping(redis.host, redis.port)  # stopped at the end of the block
    assert not any(
        redis_ping(a.rpartition(":")[0], int(a.rpartition(":")[2])) for a in cluster.addresses
    )


@pytest.mark.slow
def test_development_starts_cassandra() -> None:
    from trio_rt.testing.services import cassandra_release_version

    seen: list[Any] = []

    def use(cass: Any) -> None:
        assert isinstance(cass.endpoint, CassandraEndpoint)
        seen.append((cassandra_release_version(cass.host, cass.port), cass.rss_kib()))

    development_samples.with_cassandra(use)
    [(version, rss)] = seen
    assert version.startswith("5.") and rss > 0


# -- docs/cassandra.md ---------------------------------------------------------------------------
async def test_cassandra_session_tour(
    cassandra_endpoint: CassandraEndpoint, session: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from trio_rt_examples.docs import cassandra_samples

    await session.drop_keyspace("app")  # the sample's own keyspace, from an earlier run
    try:
        got = await cassandra_samples.main([cassandra_endpoint.host], cassandra_endpoint.port)
    finally:
        await session.drop_keyspace("app")
    assert got["rows"] == [{"id": 1, "name": "ada"}]
    assert sorted(got["names"]) == sorted(["ada", *(f"user {i}" for i in range(2, 1002))])
    assert got["count"] == {"count": 1001}
    assert capsys.readouterr().out.startswith("refused: ")


async def test_cassandra_model_tour(
    session: Any, keyspace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from trio_rt_examples.docs import cassandra_samples

    got = await cassandra_samples.model_tour(session, keyspace)
    row = got["row"]
    assert row["author"] == "ann" and row["score"] == 3 and row["title"] is None
    assert got["gone"] is None
    assert capsys.readouterr().out == f"{row['id']} 3\n"


async def test_cassandra_change_capture_writes_in_the_same_batch(
    session: Any, keyspace: str
) -> None:
    from trio_rt_examples.docs.cassandra_samples import AuditLog, posts

    from trio_rt.cassandra import CassandraQueryError, Database

    await session.execute(f"CREATE TABLE {keyspace}.audit (id timeuuid PRIMARY KEY, change text)")
    capture = AuditLog(keyspace)
    db = Database(session, keyspace, capture=capture)
    await db.create_table(posts)
    key = {"author": "ann", "id": uuid.uuid1()}
    change = await db.insert(posts, {**key, "title": "hi"})
    assert change is not None and change.operation == "insert" and change.key == key
    await db.update(posts, key, {"score": 1})
    await db.delete(posts, key)
    assert capture.outcomes == [("committed", op) for op in ("insert", "update", "delete")]
    rows = await session.execute(f"SELECT change FROM {keyspace}.audit")
    assert sorted(r["change"] for r in rows) == ["delete posts", "insert posts", "update posts"]
    # The audit table is gone: the batch fails, failed() is called, and the data row (same
    # logged batch) is not written either.
    await session.execute(f"DROP TABLE {keyspace}.audit")
    with pytest.raises(CassandraQueryError):
        await db.insert(posts, {**key, "title": "lost"})
    assert capture.outcomes[-1] == ("failed", "insert")
    assert await db.get(posts, key) is None


# -- docs/streams.md -----------------------------------------------------------------------------
async def test_streams_wiring_history_rooms_and_table_changes(session: Any, keyspace: str) -> None:
    from trio_rt_examples.docs import streams_samples

    manager, _, db = await streams_samples.build(session, keyspace, port=0)
    async with manager, client(manager, "/?user=ann") as ann:
        await manager.create_room("lobby", persistent=True)
        joined = await ann.request({"type": "join_room", "room": "lobby"})
        assert joined["type"] == "room_joined"
        await manager.broadcast_to_room("lobby", {"type": "said", "text": "kept"})
        said = await ann.recv()
        assert said["type"] == "said" and said["position"]["offset"] == 1
        page = await ann.request({"type": "history", "room": "lobby"})
        assert [m["text"] for m in page["messages"]] == ["kept"]
        assert manager.room_store is not None
        assert "lobby" in [r.name for r in await manager.room_store.load()]
        sub = await ann.request({"type": "subscribe", "table": "posts"})
        assert sub["type"] == "subscribed"
        post = {"id": uuid.uuid4(), "category": "news", "author": "bob", "title": "t", "score": 1}
        await db.insert(streams_samples.posts, post)
        event = await ann.recv()
        assert event["type"] == "data_update" and event["event"]["data"]["id"] == str(post["id"])

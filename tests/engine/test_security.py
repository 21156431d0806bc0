"""Security features on a real server: rate limits, permissions, token expiry and refresh,
Origin allowlist, connection caps. The sans-IO parts are tested without sockets first."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.trio.client import connect

from trio_rt import CloseCode, Connection, WebSocketManager
from trio_rt._core.ratelimit import Decision, LocalRateLimiter, Rate, bucket_key, take
from trio_rt._engine.auth import JWTAuthenticator, TokenVerifier
from trio_rt._engine.permissions import MemoryPermissionStore, PermissionStore, candidates

from ..conftest import Client, client, count_tasks, wait_until

SECRET = "s3cret-" + "y" * 40
MakeManager = Callable[..., WebSocketManager]


# -- rate-limit arithmetic (sans-IO) --------------------------------------------------------------
def test_rate_validation() -> None:
    assert Rate(100).capacity == 100 and Rate(100, burst=10).capacity == 10
    assert Rate(120, 60).per_second == 2.0
    for bad in ({"limit": 0}, {"limit": True}, {"limit": 1, "period": 0}, {"limit": 1, "burst": 0}):
        with pytest.raises(ValueError):
            Rate(**bad)


def test_take_refills_and_refuses_with_retry_after() -> None:
    rate = Rate(2, 1.0)  # 2 per second, bucket of 2
    d, tokens = take(2.0, 0.0, 0.0, rate)
    assert d.allowed and tokens == 1.0
    d, tokens = take(tokens, 0.0, 0.0, rate)
    assert d.allowed and tokens == 0.0
    d, tokens = take(tokens, 0.0, 0.0, rate)
    assert not d.allowed and d.retry_after == pytest.approx(0.5) and tokens == 0.0
    d, tokens = take(tokens, 0.0, 0.25, rate)  # half a token back: still refused
    assert not d.allowed and d.retry_after == pytest.approx(0.25)
    d, _ = take(tokens, 0.25, 0.5, rate)
    assert d.allowed
    # never above capacity, and a clock going backwards refills nothing
    assert take(0.0, 0.0, 1e9, rate)[1] == 1.0
    assert not take(0.5, 10.0, 5.0, rate)[0].allowed


def test_local_limiter_buckets_are_per_key_and_pruned() -> None:
    now = [0.0]
    limiter = LocalRateLimiter(clock=lambda: now[0])
    rate = Rate(3, 60)
    assert [limiter.hit_now("a", rate).allowed for _ in range(4)] == [True] * 3 + [False]
    assert limiter.hit_now("b", rate).allowed
    assert len(limiter) == 2
    now[0] = 20.0  # one token back for "a"
    assert limiter.hit_now("a", rate) == Decision(True)
    assert not limiter.hit_now("a", rate).allowed
    now[0] = 1000.0
    assert limiter.prune() == 2 and len(limiter) == 0


# -- permissions (sans-IO) ------------------------------------------------------------------------
def test_candidates() -> None:
    assert candidates("room:a") == ("room:a", "room:*", "*")
    assert candidates("room:*") == ("room:*", "*")
    assert candidates("plain") == ("plain", "*")
    assert candidates("*") == ("*",)


async def test_memory_store_grants_wildcards_and_revokes() -> None:
    store = MemoryPermissionStore()
    assert isinstance(store, PermissionStore)
    store.grant("ann", "room:a", "join", "broadcast")
    store.grant("bob", "room:*", "read")
    store.grant("*", "table:public", "read")
    store.grant("root", "*", "*")
    assert await store.has_permission("ann", "room:a", "join")
    assert not await store.has_permission("ann", "room:b", "join")
    assert not await store.has_permission("ann", "room:a", "moderate")
    assert await store.has_permission("bob", "room:anything", "read")
    assert not await store.has_permission("bob", "table:x", "read")
    assert await store.has_permission(None, "table:public", "read")  # '*' includes anonymous
    assert not await store.has_permission(None, "room:a", "join")
    assert await store.has_permission("root", "table:x", "moderate")
    # "room:a*" is a room literally named "a*", not a pattern
    assert not await store.has_permission("ann", "room:a*", "join")
    store.revoke("ann", "room:a", "join")
    assert not await store.has_permission("ann", "room:a", "join")
    assert await store.has_permission("ann", "room:a", "broadcast")
    store.revoke("ann", "room:a")
    assert not await store.has_permission("ann", "room:a", "broadcast")
    store.revoke("nobody", "room:a")  # unknown: ignored
    with pytest.raises(ValueError):
        store.grant("ann", "room:a")
    with pytest.raises(ValueError):
        store.grant("", "room:a", "join")


# -- helpers ----------------------------------------------------------------------------------
def as_user(manager: WebSocketManager) -> None:
    """Connections say who they are with ?user=NAME (tests only: no authentication)."""

    @manager.on_connection
    async def identify(conn: Connection) -> None:
        users = conn.request.query.get("user")
        if users:
            conn.user_id = users[0]


def add_echo(manager: WebSocketManager) -> None:
    @manager.on_message("echo")
    async def echo(conn: Connection, message: dict[str, Any]) -> None:
        await conn.send({"type": "echo", "n": message.get("n")})


async def expect_close(c: Client) -> int:
    with trio.fail_after(10):
        while True:
            try:
                await c.ws.recv()
            except ConnectionClosed as exc:
                assert exc.rcvd is not None
                return exc.rcvd.code


# -- rate limits on a live server -----------------------------------------------------------------
async def test_rate_limited_reply_then_4029_and_others_unaffected(
    make_manager: MakeManager,
) -> None:
    manager = make_manager(rate_limit=5, rate_limit_max_refusals=3)
    add_echo(manager)
    codes: list[int] = []

    @manager.on_disconnect
    async def gone(conn: Connection, code: int) -> None:
        codes.append(code)

    async with manager, client(manager) as bystander, client(manager) as c:
        for n in range(5):
            assert await c.request({"type": "echo", "n": n}) == {"type": "echo", "n": n}
        reply = await c.request({"type": "echo", "n": 5, "id": 9})
        assert reply["type"] == "error" and reply["code"] == "rate_limited" and reply["id"] == 9
        # 5 per minute: the next token is 12 s away (rounded up to the millisecond)
        assert 0 < reply["retry_after"] <= 12.0
        # invalid frames are not free: they are refused the same way
        reply = await c.request("not json")  # type: ignore[arg-type]
        assert reply["code"] == "rate_limited"
        reply = await c.request({"type": "ping"})
        assert reply["code"] == "rate_limited"  # third refusal in a row -> close 4029
        assert await expect_close(c) == CloseCode.RATE_LIMITED
        await wait_until(lambda: codes == [4029])
        assert manager.stats.rate_limited == 3
        from trio_rt import WebSocketMetrics

        text = WebSocketMetrics(manager, route=None).exposition().decode()
        assert f'trio_rt_rate_limited_messages_total{{server_id="{manager.server_id}"}} 3.0' in text
        # another client (another budget) never noticed
        assert await bystander.request({"type": "echo", "n": 1}) == {"type": "echo", "n": 1}


async def test_per_type_limits_and_exemptions(make_manager: MakeManager) -> None:
    manager = make_manager(rate_limit=2, rate_limits={"echo": 4, "ping": None})
    add_echo(manager)
    async with manager, client(manager) as c:
        for n in range(4):  # echo has its own budget of 4
            assert (await c.request({"type": "echo", "n": n}))["type"] == "echo"
        assert (await c.request({"type": "echo"}))["code"] == "rate_limited"
        for _ in range(10):  # ping is exempt
            assert (await c.request({"type": "ping"}))["type"] == "pong"
        for _ in range(2):  # the default budget is untouched by echo and ping
            assert (await c.request({"type": "join_room", "room": "r"}))["type"] == "room_joined"
        assert (await c.request({"type": "leave_room", "room": "r"}))["code"] == "rate_limited"


@given(
    a=st.tuples(
        st.none() | st.text(max_size=12), st.text(max_size=6), st.none() | st.text(max_size=8)
    ),
    b=st.tuples(
        st.none() | st.text(max_size=12), st.text(max_size=6), st.none() | st.text(max_size=8)
    ),
)
def test_bucket_keys_never_collide(
    a: tuple[str | None, str, str | None], b: tuple[str | None, str, str | None]
) -> None:
    """Two messages share a bucket only when they have the same owner and the same budget."""

    def owner(user: str | None, conn: str, mtype: str | None) -> tuple[object, ...]:
        return ("u", user, mtype) if user is not None else ("c", conn, mtype)

    same = owner(*a) == owner(*b)
    assert (bucket_key(*a) == bucket_key(*b)) == same, (a, b)


def test_bucket_keys_of_the_colliding_pair() -> None:
    assert bucket_key("bob", "c1", "typing") == "u:3:bob:typing"
    assert bucket_key("bob:typing", "c2") == "u:10:bob:typing"
    assert bucket_key(None, "c1") == "c:2:c1"


async def test_a_user_id_cannot_spend_another_users_typed_budget(
    make_manager: MakeManager,
) -> None:
    """User `bob:typing` writing default-budget messages must not drain user `bob`'s `echo`
    budget (keys once were f"u:{user}" + ":" + type)."""
    manager = make_manager(rate_limit=3, rate_limits={"echo": 3})
    as_user(manager)
    add_echo(manager)
    async with (
        manager,
        client(manager, "/?user=bob") as bob,
        client(manager, "/?user=bob%3Aecho") as mallory,
    ):
        for _ in range(3):  # mallory spends her own default budget
            assert (await mallory.request({"type": "ping"}))["type"] == "pong"
        assert (await mallory.request({"type": "ping"}))["code"] == "rate_limited"
        for n in range(3):  # bob's echo budget is whole
            assert (await bob.request({"type": "echo", "n": n}))["type"] == "echo"


async def test_limit_is_per_user_across_connections(make_manager: MakeManager) -> None:
    manager = make_manager(rate_limit=3)
    as_user(manager)
    async with (
        manager,
        client(manager, "/?user=ann") as a1,
        client(manager, "/?user=ann") as a2,
        client(manager) as anon1,
        client(manager) as anon2,
    ):
        replies = [await c.request({"type": "ping"}) for c in (a1, a2, a1)]
        assert [r["type"] for r in replies] == ["pong"] * 3
        assert (await a2.request({"type": "ping"}))["code"] == "rate_limited"
        # anonymous connections have a budget each
        for c in (anon1, anon2):
            for _ in range(3):
                assert (await c.request({"type": "ping"}))["type"] == "pong"


# -- permissions on a live server -----------------------------------------------------------------
async def test_authorize_defaults_without_a_store(make_manager: MakeManager) -> None:
    manager = make_manager()
    seen: list[Connection] = []

    @manager.on_connection
    async def keep(conn: Connection) -> None:
        seen.append(conn)

    async with manager, client(manager):
        (conn,) = seen
        for action in ("join", "read", "broadcast"):
            assert await manager.authorize(conn, "table:posts", action)
        assert not await manager.authorize(conn, "room:r", "moderate")


async def test_private_room_refusal_reads_like_an_unknown_room(make_manager: MakeManager) -> None:
    store = MemoryPermissionStore()
    store.grant("ann", "room:vip", "join")
    manager = make_manager(permissions=store)
    as_user(manager)
    closed = make_manager(auto_create_rooms=False)
    async with manager, closed:
        await manager.create_room("vip", private=True, moderators=["mod"])
        async with client(manager, "/?user=eve") as eve, client(closed) as other:
            refused = await eve.request({"type": "join_room", "room": "vip", "id": 1})
            unknown = await other.request({"type": "join_room", "room": "vip", "id": 1})
            assert refused == unknown
            assert refused["code"] == "not_permitted"
            assert not manager.members_of("vip")
        async with client(manager, "/?user=ann") as ann, client(manager, "/?user=mod") as mod:
            assert (await ann.request({"type": "join_room", "room": "vip"}))["type"] == (
                "room_joined"
            )
            assert (await mod.request({"type": "join_room", "room": "vip"}))["type"] == (
                "room_joined"
            )
        store.revoke("ann", "room:vip")
        async with client(manager, "/?user=ann") as ann:
            assert (await ann.request({"type": "join_room", "room": "vip"}))["code"] == (
                "not_permitted"
            )


async def test_private_room_without_store_is_for_moderators_only(make_manager: MakeManager) -> None:
    manager = make_manager()
    as_user(manager)
    async with manager:
        await manager.create_room("vip", private=True, moderators=["mod"])
        async with client(manager, "/?user=ann") as ann, client(manager, "/?user=mod") as mod:
            assert (await ann.request({"type": "join_room", "room": "vip"}))["code"] == (
                "not_permitted"
            )
            assert (await mod.request({"type": "join_room", "room": "vip"}))["type"] == (
                "room_joined"
            )
            # the app itself may still put anyone in
            (conn,) = [c for c in manager.connections.values() if c.user_id == "ann"]
            assert await manager.join_room(conn, "vip")


async def test_kick_by_moderator_or_moderate_permission(make_manager: MakeManager) -> None:
    store = MemoryPermissionStore()
    store.grant("admin", "room:*", "moderate")
    manager = make_manager(permissions=store)
    as_user(manager)
    async with manager:
        await manager.create_room("r", moderators=["mod"], persistent=True)
        async with (
            client(manager, "/?user=bob") as bob,
            client(manager, "/?user=mod") as mod,
            client(manager, "/?user=admin") as admin,
            client(manager, "/?user=eve") as eve,
        ):
            for c in (bob, mod, admin, eve):
                await c.request({"type": "join_room", "room": "r"})
            reply = await eve.request({"type": "kick", "room": "r", "user_id": "bob"})
            assert reply["code"] == "not_permitted"
            reply = await admin.request({"type": "kick", "room": "r", "user_id": "bob", "id": 2})
            assert reply == {"type": "kicked", "room": "r", "user_id": "bob", "id": 2}
            assert (await bob.recv())["type"] == "room_kicked"
            await bob.request({"type": "join_room", "room": "r"})
            reply = await mod.request({"type": "kick", "room": "r", "user_id": "bob"})
            assert reply["type"] == "kicked"


async def test_client_broadcast_needs_broadcast_permission(make_manager: MakeManager) -> None:
    store = MemoryPermissionStore()
    store.grant("ann", "room:news", "broadcast")
    manager = make_manager(permissions=store)
    as_user(manager)
    sent: list[str] = []

    @manager.on_message("post", room_field="payload.room")
    async def post(conn: Connection, message: dict[str, Any]) -> None:
        sent.append(message["payload"]["room"])
        await conn.send({"type": "posted"})

    with pytest.raises(ValueError):
        manager.on_message(None, room_field="room")
    async with manager, client(manager, "/?user=ann") as ann, client(manager, "/?user=eve") as eve:
        ok = await ann.request({"type": "post", "payload": {"room": "news"}})
        assert ok == {"type": "posted"}
        no = await eve.request({"type": "post", "payload": {"room": "news"}, "id": "x"})
        assert no["code"] == "not_permitted" and no["id"] == "x"
        bad = await ann.request({"type": "post", "payload": {"room": "a b"}})
        assert bad["code"] == "invalid_field"
        missing = await ann.request({"type": "post", "payload": "news"})
        assert missing["code"] == "invalid_field" and "payload.room" in missing["message"]
        assert sent == ["news"]


async def test_failing_store_refuses(make_manager: MakeManager) -> None:
    class Broken:
        async def has_permission(self, user_id: str | None, resource: str, action: str) -> bool:
            raise ConnectionError("store down")

    manager = make_manager(permissions=Broken())
    seen: list[Connection] = []

    @manager.on_connection
    async def keep(conn: Connection) -> None:
        seen.append(conn)

    async with manager, client(manager):
        assert not await manager.authorize(seen[0], "room:r", "join")


async def test_max_rooms_per_connection(make_manager: MakeManager) -> None:
    manager = make_manager(max_rooms_per_connection=2)
    async with manager, client(manager) as c:
        for room in ("a", "b"):
            assert (await c.request({"type": "join_room", "room": room}))["type"] == "room_joined"
        assert (await c.request({"type": "join_room", "room": "a"}))["type"] == "room_joined"
        reply = await c.request({"type": "join_room", "room": "c"})
        assert reply["code"] == "limit_exceeded"
        await c.request({"type": "leave_room", "room": "a"})
        assert (await c.request({"type": "join_room", "room": "c"}))["type"] == "room_joined"


# -- token expiry and refresh ---------------------------------------------------------------------
def token(sub: str = "ann", lifetime: float = 60.0) -> str:
    now = time.time()
    return jwt.encode({"sub": sub, "exp": now + lifetime, "iat": now}, SECRET, algorithm="HS256")


def jwt_manager(make_manager: MakeManager, **options: Any) -> WebSocketManager:
    auth = JWTAuthenticator(TokenVerifier(SECRET, leeway=0))
    return make_manager(auth=auth, **options)


def bearer(tok: str) -> dict[str, Any]:
    return {"additional_headers": {"Authorization": f"Bearer {tok}"}}


async def test_expired_token_closes_4004(make_manager: MakeManager) -> None:
    manager = jwt_manager(make_manager)
    codes: list[int] = []

    @manager.on_disconnect
    async def gone(conn: Connection, code: int) -> None:
        codes.append(code)

    async with manager:
        async with client(manager, **bearer(token(lifetime=60))) as stays:
            async with client(manager, **bearer(token(lifetime=2.0))) as c:
                assert await expect_close(c) == CloseCode.TOKEN_EXPIRED
            assert (await stays.request({"type": "ping"}))["type"] == "pong"
        await wait_until(lambda: sorted(codes) == [1000, 4004])
        assert manager.stats.tokens_expired == 1


async def test_refresh_extends_the_connection(make_manager: MakeManager) -> None:
    manager = jwt_manager(make_manager)
    seen: list[Connection] = []

    @manager.on_connection
    async def keep(conn: Connection) -> None:
        seen.append(conn)

    async with manager, client(manager, **bearer(token(lifetime=1.0))) as c:
        fresh = token(lifetime=60)
        reply = await c.request({"type": "refresh", "token": fresh, "id": 1})
        assert reply["type"] == "refreshed" and reply["id"] == 1
        assert reply["expires_at"] == jwt.decode(fresh, SECRET, algorithms=["HS256"])["exp"]
        old_deadline = time.time() + 1.0
        # past the first token's expiry, the connection is still open
        await trio.sleep(max(0.0, old_deadline - time.time()) + 0.3)
        assert (await c.request({"type": "ping"}))["type"] == "pong"
        assert seen[0].expires_at == reply["expires_at"]


async def test_refresh_refusals(make_manager: MakeManager) -> None:
    manager = jwt_manager(make_manager)
    async with manager, client(manager, **bearer(token())) as c:
        reply = await c.request({"type": "refresh", "token": token(sub="mallory")})
        assert reply["code"] == "not_permitted" and "another user" in reply["message"]
        reply = await c.request({"type": "refresh", "token": token(lifetime=-5)})
        assert reply == {
            "type": "error",
            "code": "not_permitted",
            "message": "refresh refused: token expired",
        }
        reply = await c.request({"type": "refresh", "token": "x" * 9000})
        assert reply["code"] == "too_large"
        reply = await c.request({"type": "refresh"})
        assert reply["code"] == "invalid_field"
        assert (await c.request({"type": "ping"}))["type"] == "pong"  # still open
    plain = make_manager()
    async with plain, client(plain) as c:
        reply = await c.request({"type": "refresh", "token": token()})
        assert reply["code"] == "not_permitted" and "not enabled" in reply["message"]


async def test_token_expiry_costs_no_task_per_connection(make_manager: MakeManager) -> None:
    """One timer task for the whole server: an authenticated connection (with an expiry) runs
    exactly as many tasks as an anonymous one."""
    auth = JWTAuthenticator(TokenVerifier(SECRET, leeway=0), optional=True)
    manager = make_manager(auth=auth)
    async with manager:
        base = count_tasks()
        async with client(manager) as c:
            await c.request({"type": "ping"})
            anonymous = count_tasks() - base
        await wait_until(lambda: not manager.connections)
        async with client(manager, **bearer(token())) as c, client(manager, **bearer(token())):
            await c.request({"type": "ping"})
            assert all(conn.expires_at for conn in manager.connections.values())
            assert count_tasks() - base == 2 * anonymous


async def test_expiry_entries_of_closed_connections_do_not_pile_up(
    make_manager: MakeManager,
) -> None:
    manager = jwt_manager(make_manager, rate_limit=None)
    async with manager, client(manager, **bearer(token())) as stays:
        for _ in range(150):  # churn with long-lived tokens
            async with client(manager, **bearer(token(lifetime=3600))):
                pass
            await stays.request({"type": "ping"})
        timers = manager._tokens.timers
        assert timers.heap_size <= 2 * len(manager.connections) + 64 + 1
        # the live connection's entry survived every compaction
        await wait_until(lambda: len(manager.connections) == 1)
        (live,) = manager.connections.values()
        assert live.id in timers and len(timers) == 1


# -- Origin allowlist, connection caps ------------------------------------------------------------
async def refused(manager: WebSocketManager, path: str = "/", **kwargs: Any) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as info:
        async with connect(manager.url.rstrip("/") + path, open_timeout=5, **kwargs):
            pass  # pragma: no cover
    return info.value


async def test_origin_allowlist(make_manager: MakeManager) -> None:
    manager = make_manager(allowed_origins=["https://App.example.com"])
    async with manager:
        async with client(manager, origin="https://app.example.com"):
            pass
        async with client(manager):  # no Origin: not a browser, allowed by default
            pass
        err = await refused(manager, origin="https://evil.example.com")
        assert err.response.status_code == 403
        assert json.loads(err.response.body) == {"error": "origin not allowed"}
        assert manager.stats.handshakes_rejected["origin"] == 1
        assert not manager.connections
    strict = make_manager(allowed_origins=["https://app.example.com"], allow_missing_origin=False)
    async with strict:
        assert (await refused(strict)).response.status_code == 403


async def test_per_ip_and_per_user_caps_answer_429(make_manager: MakeManager) -> None:
    manager = make_manager(max_connections_per_ip=2)
    async with manager:
        async with client(manager), client(manager):
            err = await refused(manager)
            assert err.response.status_code == 429
            assert (
                json.loads(err.response.body)["error"] == "too many connections from this address"
            )
        await wait_until(lambda: not manager.connections)
        async with client(manager):
            pass
        await wait_until(lambda: manager._handshake.caps.open_for(ip="127.0.0.1") == 0)
    manager = make_manager(max_connections_per_user=1)
    as_user(manager)
    async with manager:
        async with client(manager, "/?user=ann"), client(manager, "/?user=bob"), client(manager):
            err = await refused(manager, "/?user=ann")
            assert err.response.status_code == 429
            assert json.loads(err.response.body)["error"] == "too many connections for this user"
            async with client(manager):  # anonymous: not capped per user
                pass
        await wait_until(lambda: not manager.connections)
        caps = manager._handshake.caps
        assert caps.open_for(user="ann") == caps.open_for(user="bob") == 0
        async with client(manager, "/?user=ann"):
            assert manager._handshake.caps.open_for(user="ann") == 1


def test_new_options_are_validated(make_manager: MakeManager) -> None:
    for bad in [
        {"rate_limit": 0},
        {"rate_limit_period": -1},
        {"rate_limits": {"echo": 0}},
        {"rate_limits": {"": 5}},
        {"rate_limit_max_refusals": 0},
        {"max_connections_per_ip": 0},
        {"max_connections_per_user": "3"},
        {"max_rooms_per_connection": 0},
        {"max_subscriptions_per_connection": -1},
        {"allowed_origins": "https://a.example"},
        {"allowed_origins": ["a.example"]},
        {"allow_missing_origin": "no"},
    ]:
        with pytest.raises(ValueError, match="invalid WebSocketManager options"):
            make_manager(**bad)


# -- the Python client's token provider -----------------------------------------------------------
def client_options(**options: Any) -> dict[str, Any]:
    import random

    options.setdefault("initial_delay", 0.01)
    options.setdefault("max_delay", 0.05)
    options.setdefault("ping_interval", None)
    options.setdefault("rng", random.Random(0))
    return options


async def test_client_sends_a_static_token(make_manager: MakeManager) -> None:
    from trio_rt.client import WebSocketClient

    manager = jwt_manager(make_manager)
    async with manager, WebSocketClient(manager.url, token=token("zoe"), **client_options()) as c:
        with trio.fail_after(10):
            await c.wait_connected()
        assert c.welcome is not None and c.welcome["user_id"] == "zoe"


async def test_client_calls_the_provider_on_every_connect(make_manager: MakeManager) -> None:
    """The first token expires (server closes 4004, not fatal); the reconnect takes a new one."""
    from trio_rt.client import WebSocketClient

    manager = jwt_manager(make_manager)
    lifetimes = [2.0, 60.0]
    calls: list[float] = []

    async def provider() -> str:
        lifetime = lifetimes[min(len(calls), 1)]
        calls.append(lifetime)
        await trio.lowlevel.checkpoint()
        return token("ann", lifetime)

    async with manager:
        options = client_options(token=provider, refresh_margin=None)
        async with WebSocketClient(manager.url, **options) as c:
            with trio.fail_after(10):
                await wait_until(lambda: c.stats.connections == 2)
            assert calls == [2.0, 60.0]
            assert manager.stats.tokens_expired == 1


async def test_client_refreshes_in_band_before_expiry(make_manager: MakeManager) -> None:
    from trio_rt.client import WebSocketClient

    manager = jwt_manager(make_manager)
    calls: list[str] = []

    def provider() -> str:  # sync providers work too
        calls.append("x")
        return token("ann", 4.0 if len(calls) == 1 else 60.0)

    async with manager:
        options = client_options(token=provider, refresh_margin=3.0)
        async with WebSocketClient(manager.url, **options) as c:
            with trio.fail_after(10):
                await c.wait_connected()
                first_exp = time.time() + 4.0
                await wait_until(lambda: c.stats.refreshes == 1)
                await wait_until(
                    lambda: all(
                        conn.expires_at and conn.expires_at > first_exp + 30
                        for conn in manager.connections.values()
                    )
                )
                await trio.sleep(max(0.0, first_exp - time.time()) + 0.3)
            assert c.stats.connections == 1  # never closed: the fresh token arrived in time
            assert manager.stats.tokens_expired == 0
            assert len(calls) == 2


def test_token_exp_is_read_without_verification() -> None:
    from trio_rt.client._wire import token_exp

    assert token_exp(jwt.encode({"exp": 123}, "k" * 32, algorithm="HS256")) == 123.0
    assert token_exp(jwt.encode({"sub": "x"}, "k" * 32, algorithm="HS256")) is None
    assert token_exp("not-a-jwt") is None
    assert token_exp("a.!!!.c") is None
    assert token_exp(None) is None

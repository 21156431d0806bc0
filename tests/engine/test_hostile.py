"""Hostile input: property tests of the parser and the rate-limit arithmetic, then a fuzz run
against a live server (with compression), a compression bomb, a slow-loris handshake and
injection attempts through room names."""

from __future__ import annotations

import json
import random
import socket
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import connect

from trio_rt import Connection, ErrorCode, WebSocketManager
from trio_rt._core.protocol import BUILTIN_TYPES, ProtocolError, encode, parse
from trio_rt._core.ratelimit import Rate, take

from ..conftest import Client, client, count_tasks, wait_until

MakeManager = Callable[..., WebSocketManager]
ERROR_CODES = {c.value for c in ErrorCode}
DOCUMENTED_CLOSES = {1007, 1009, 4029}  # invalid UTF-8, too big, rate-limit abuse

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=15,
)
field_names = st.sampled_from(["type", "room", "id", "user_id", "token", "payload", "x"])


# -- the parser -------------------------------------------------------------------------------
@given(
    st.sampled_from([*sorted(BUILTIN_TYPES), "app", "", "1bad", "a" * 65]) | json_values,
    st.dictionaries(field_names, json_values, max_size=5),
)
def test_parse_builtin_shapes_raise_only_protocol_error(
    mtype: object, fields: dict[str, Any]
) -> None:
    message = {**fields, "type": mtype}
    try:
        parse(json.dumps(message))
    except ProtocolError as exc:
        assert exc.code in ERROR_CODES and exc.message


@given(st.binary(max_size=200))
def test_parse_of_arbitrary_bytes_as_text_or_binary(data: bytes) -> None:
    for frame in (data, data.decode("utf-8", "replace")):
        try:
            parse(frame)
        except ProtocolError as exc:
            assert exc.code in ERROR_CODES


@pytest.mark.parametrize(
    "frame",
    [
        "[" * 100_000,
        '{"type":"app","v":' + "[" * 50_000 + "]" * 50_000 + "}",
        '{"type":"app","n":' + "9" * 5000 + "}",
        '{"type":"app","n":1e999999}',
        '{"type":"app","n":NaN}',
        '{"type":"join_room","room":"\\ud800"}',
        '{"type":"ping","id":' + "1" * 30 + "}",
        '{"type":"\\u0000"}',
        '{"type":"ping"}' * 2,
        "\ufeff{}",
    ],
)
def test_parse_extremes(frame: str) -> None:
    try:
        parse(frame)
    except ProtocolError as exc:
        assert exc.code in ERROR_CODES


@pytest.mark.parametrize("number", ["1e400", "-1e400", "NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_invalid_json(number: str) -> None:
    """Python's json accepts them; nothing could echo them back (encode refuses them)."""
    with pytest.raises(ProtocolError) as info:
        parse('{"type":"app","n":' + number + "}")
    assert info.value.code == ErrorCode.INVALID_JSON


def test_lone_surrogates_echo_back_as_json_escapes() -> None:
    command = parse('{"type":"app","s":"a\\ud800b"}')
    data = encode({"type": "echo", "s": command.data["s"]})  # type: ignore[union-attr]
    assert json.loads(data) == {"type": "echo", "s": "a\ud800b"}
    data.decode("utf-8")  # valid UTF-8 on the wire


# -- rate-limit arithmetic --------------------------------------------------------------------
@settings(max_examples=300)
@given(
    st.integers(1, 1000),
    st.floats(0.1, 3600),
    st.one_of(st.none(), st.integers(1, 1000)),
    st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=200),
)
def test_bucket_never_allows_more_than_burst_plus_refill(
    limit: int, period: float, burst: int | None, gaps: list[float]
) -> None:
    rate = Rate(limit, period, burst)
    tokens, updated, now, allowed = float(rate.capacity), 0.0, 0.0, 0
    for gap in gaps:
        now += gap
        decision, tokens = take(tokens, updated, now, rate)
        updated = now
        assert 0.0 <= tokens <= rate.capacity
        if decision.allowed:
            allowed += 1
            assert decision.retry_after == 0
        else:
            assert decision.retry_after > 0
            # waiting retry_after is enough, and not more than needed
            later = now + decision.retry_after * (1 + 1e-9) + 1e-9
            assert take(tokens, updated, later, rate)[0].allowed
    assert allowed <= rate.capacity + now * rate.per_second + 1e-6


# -- a live server under fuzz -----------------------------------------------------------------
def hostile_frames(rng: random.Random) -> list[str | bytes | list[str]]:
    odd = ["\u202e", "\u200b", "\x00", "\U0001f600", "\ufffd", "é", "\u0301", "\\", '"', "'"]
    frames: list[str | bytes | list[str]] = [
        "",
        "{",
        "}",
        "null",
        "[]",
        '"type"',
        "{'type': 'ping'}",
        "[" * 20_000,
        '{"type":"echo","v":' + "[" * 5_000 + "]" * 5_000 + "}",
        '{"type":"echo","n":' + "7" * 4500 + "}",
        '{"type":"echo","n":1e400}',
        '{"type":"echo","s":"\\ud800"}',
        '{"type":"echo","s":"\\udfff\\ud800x"}',
        '{"type":"join_room","room":"\\ud83d"}',
        b"\x00\x01binary",
        b"",
        ['{"type":', '"ping"', ',"id":"frag"}'],  # fragmented message
        ['{"type":"echo",', '"v":"', "x" * 10_000, '"}'],
    ]
    for _ in range(120):
        kind = rng.randrange(6)
        if kind == 0:
            frames.append(json.dumps({"type": rng.choice(sorted(BUILTIN_TYPES)), **junk(rng)}))
        elif kind == 1:
            frames.append(json.dumps({"type": "echo", "v": junk(rng), "id": junk_scalar(rng)}))
        elif kind == 2:
            text = json.dumps({"type": "post", "room": rng.choice(odd) * rng.randrange(1, 200)})
            frames.append(text)
        elif kind == 3:
            raw = json.dumps(junk(rng))
            cut = rng.randrange(len(raw) + 1)
            frames.append(raw[:cut] + "".join(rng.choice(odd) for _ in range(3)) + raw[cut:])
        elif kind == 4:
            frames.append(bytes(rng.randrange(256) for _ in range(rng.randrange(64))))
        else:
            frames.append(json.dumps({"type": junk_scalar(rng), "room": junk_scalar(rng)}))
    return frames


def junk_scalar(rng: random.Random) -> Any:
    return rng.choice(
        [None, True, -1, 2**53 + 1, 10**40, 1.5, "", "x" * 200, "r", "\u202eroom", [], {}]
    )


def junk(rng: random.Random) -> dict[str, Any]:
    keys = ["room", "user_id", "token", "id", "payload", "since", "x"]
    return {rng.choice(keys): junk_scalar(rng) for _ in range(rng.randrange(4))}


async def test_fuzz_a_live_server(make_manager: MakeManager) -> None:
    manager = make_manager(compression=True, max_message_size=64 * 1024, rate_limit=1000)

    @manager.on_message("echo")
    async def echo(conn: Connection, message: dict[str, Any]) -> None:
        await conn.send({"type": "echo", "v": message.get("v"), "n": message.get("n")})

    @manager.on_message("post", room_field="room")
    async def post(conn: Connection, message: dict[str, Any]) -> None:
        await manager.broadcast_to_room(message["room"], {"type": "posted"})

    rng = random.Random(20261126)
    frames = hostile_frames(rng)
    outcomes: dict[str, int] = {}
    async with manager, client(manager, compression="deflate") as bystander:
        await bystander.request({"type": "join_room", "room": "lobby"})
        idle = count_tasks()
        fuzzer: Client | None = None
        async with trio.open_nursery() as nursery:
            for frame in frames:
                if fuzzer is None:
                    ws = await nursery.start(open_ws, manager)
                    fuzzer = Client(ws)
                    fuzzer.welcome = await fuzzer.recv()
                outcome = await send_and_classify(fuzzer, frame)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                if outcome.startswith("close"):
                    assert int(outcome[6:]) in DOCUMENTED_CLOSES, frame
                    fuzzer = None
                # the other client is unaffected throughout
                if rng.random() < 0.1:
                    assert (await bystander.request({"type": "ping"}))["type"] == "pong"
            if fuzzer is not None:
                await fuzzer.ws.aclose()
        await manager.broadcast_to_room("lobby", {"type": "still-here"})
        assert (await bystander.recv())["type"] == "still-here"
        await wait_until(lambda: len(manager.connections) == 1)
        await wait_until(lambda: count_tasks() == idle)  # nothing leaked
    assert manager.stats.handler_errors == 0, outcomes
    assert outcomes.get("error", 0) > 50 and outcomes.get("reply", 0) > 10, outcomes


async def open_ws(manager: WebSocketManager, *, task_status: Any) -> None:
    async with connect(manager.url, compression="deflate", ping_interval=None) as ws:
        task_status.started(ws)
        await ws.wait_closed()


async def send_and_classify(c: Client, frame: str | bytes | list[str]) -> str:
    """Send one hostile frame; 'reply', 'error' (a valid error reply) or 'close <code>'."""
    try:
        if isinstance(frame, list):
            await c.ws.send(iter(frame))
        else:
            await c.ws.send(frame)
        # a ping after each frame: its pong proves the server answered everything before it
        await c.ws.send(json.dumps({"type": "ping", "id": "probe"}))
        seen = "reply"
        while True:
            with trio.fail_after(10):
                raw = await c.ws.recv()
            message = json.loads(raw)
            assert isinstance(message, dict) and isinstance(message.get("type"), str)
            if message.get("id") == "probe":
                assert message["type"] == "pong"
                return seen
            if message["type"] == "error":
                assert message["code"] in ERROR_CODES and message["code"] != "internal_error"
                seen = "error"
    except ConnectionClosed as exc:
        assert exc.rcvd is not None, "the server dropped the connection without a close frame"
        return f"close {exc.rcvd.code}"


async def test_room_names_cannot_reach_other_rooms(make_manager: MakeManager) -> None:
    """Room names go to broker channels verbatim: patterns, prefixes and separators in a name
    are literal and never subscribe to another room's channel."""
    manager = make_manager()
    tricky = [
        "*",
        "lobby*",
        "lobby:",
        "room:lobby",
        "trio_rt:room:lobby",
        "?obby",
        "[l]obby",
        "lobby\u200b",
        "LOBBY",
        "../lobby",
        "'lobby'--",
        "lobby\\",
    ]
    async with manager, client(manager) as member, client(manager) as prober:
        await member.request({"type": "join_room", "room": "lobby"})
        for name in tricky:
            reply = await prober.request({"type": "join_room", "room": name})
            assert reply == {"type": "room_joined", "room": name}
        assert manager.rooms_of(next(iter(manager.members_of("*")))) == frozenset(tricky)
        await manager.broadcast_to_room("lobby", {"type": "secret"})
        assert (await member.recv())["type"] == "secret"
        assert (await prober.request({"type": "ping"}))["type"] == "pong"  # nothing before it
        for bad in ["lob by", "lobby\n", "\x00", "", "x" * 129, "tab\t"]:
            reply = await prober.request({"type": "join_room", "room": bad})
            assert reply["code"] in ("invalid_field", "too_large")


# -- transport limits -------------------------------------------------------------------------
async def test_compression_bomb_is_cut_at_max_size(make_manager: MakeManager) -> None:
    """websockets applies max_size to the *decompressed* message: a 10 MiB message of zeros
    that deflates to ~10 KiB is refused (1009) without being inflated in full."""
    manager = make_manager(compression=True, max_message_size=64 * 1024)
    bomb = json.dumps({"type": "echo", "pad": "0" * (10 * 1024 * 1024)})
    assert len(zlib.compress(bomb.encode(), 9)) < 64 * 1024  # small on the wire
    async with manager, client(manager, compression="deflate") as bystander:
        async with client(manager, compression="deflate") as c:
            assert c.ws.protocol.extensions, "permessage-deflate was negotiated"
            await c.ws.send(bomb)
            with pytest.raises(ConnectionClosed) as info:
                await c.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        assert (await bystander.request({"type": "ping"}))["type"] == "pong"


async def test_slow_loris_handshake_is_cut_and_blocks_nobody(make_manager: MakeManager) -> None:
    # 3 s, not less: the bystanders' own handshakes must fit in it on a loaded machine.
    manager = make_manager(handshake_timeout=3.0)
    request = (
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        + b"X-Pad: "
        + b"a" * 10_000
        + b"\r\n\r\n"
    )
    async with manager:
        loris = await trio.open_tcp_stream(*manager.address)
        cut = trio.Event()

        async def drip() -> None:
            try:
                for i in range(len(request)):  # one byte every 50 ms: ~9 minutes in total
                    await loris.send_all(request[i : i + 1])
                    await trio.sleep(0.05)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                cut.set()

        async def read_until_eof() -> None:
            try:
                while await loris.receive_some():
                    pass
            except trio.BrokenResourceError:
                pass  # a reset: the server closed with the loris's bytes unread
            cut.set()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drip)
                nursery.start_soon(read_until_eof)
                # meanwhile, others connect and talk normally
                for _ in range(3):
                    async with client(manager) as c:
                        assert (await c.request({"type": "ping"}))["type"] == "pong"
                await cut.wait()  # the server hung up on the loris (handshake_timeout)
                nursery.cancel_scope.cancel()
        await loris.aclose()
        assert manager.stats.handshakes_rejected.get("aborted", 0) == 0  # never accepted
        await wait_until(lambda: not manager.connections)


async def test_idle_dead_peer_is_closed_by_the_heartbeat(make_manager: MakeManager) -> None:
    """A peer that stopped answering (no pong) is closed with 4001 after heartbeat_timeout."""
    manager = make_manager(heartbeat_interval=0.2, heartbeat_timeout=0.2)
    codes: list[int] = []

    @manager.on_disconnect
    async def gone(conn: Connection, code: int) -> None:
        codes.append(code)

    async with manager:
        sock = socket.create_connection(manager.address)
        try:
            sock.sendall(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            await wait_until(lambda: codes == [4001])  # we never answer the server's pings
        finally:
            sock.close()

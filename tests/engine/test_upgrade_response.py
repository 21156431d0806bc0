"""The handshake's fast paths (`_transport/ws_connection.py`, `_transport/upgrade_request.py`):
the request parsed in one pass is the `Request` websockets' parser would deliver, and whatever
that parse does not take is left to websockets; the 101 written as bytes is the one
websockets' `accept` + `Response.serialize` would write, byte for byte; every request
websockets refuses is still refused by websockets, with the same answer.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets import http11
from websockets.http11 import Request as WsRequest
from websockets.server import ServerProtocol
from websockets.utils import accept_key

from trio_rt import WebSocketManager
from trio_rt._core.options import ServerOptions
from trio_rt._transport.upgrade_request import parse_request_head
from trio_rt._transport.ws_connection import (
    _deflate,
    _http_date,
    _process_upgrade,
    _upgrade_response,
)

from ..conftest import wait_until

MakeManager = Callable[..., WebSocketManager]

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def _request(**extra: str) -> WsRequest:
    lines = [
        "GET /chat?x=1 HTTP/1.1",
        "Host: example.com",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
        *(f"{name.replace('_', '-')}: {value}" for name, value in extra.items()),
    ]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode()
    protocol = ServerProtocol()
    protocol.receive_data(data)
    (request,) = protocol.events_received()
    assert isinstance(request, WsRequest)
    return request


@pytest.mark.parametrize(
    ("compression", "subprotocols", "headers"),
    [
        (False, (), {}),
        (False, (), {"Sec_WebSocket_Protocol": "chat"}),
        (False, ("chat",), {"Sec_WebSocket_Protocol": "bearer.x, chat"}),
        (True, (), {"Sec_WebSocket_Extensions": "permessage-deflate; client_max_window_bits"}),
        (
            True,
            ("chat", "v2"),
            {
                "Sec_WebSocket_Extensions": "permessage-deflate; client_max_window_bits",
                "Sec_WebSocket_Protocol": "v2",
            },
        ),
    ],
)
def test_the_upgrade_bytes_are_websockets_own(
    monkeypatch: pytest.MonkeyPatch,
    compression: bool,
    subprotocols: tuple[str, ...],
    headers: dict[str, str],
) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_790_000_000.75)  # one Date for both
    options = ServerOptions(compression=compression, subprotocols=subprotocols)

    def select(protocol: ServerProtocol, offered: object) -> str | None:
        return next((p for p in offered if p in subprotocols), None)  # type: ignore[attr-defined]

    theirs = ServerProtocol(extensions=_deflate(options), select_subprotocol=select)
    response = theirs.accept(_request(**headers))
    assert response.status_code == 101
    response.headers["Server"] = "trio_rt"

    ours = ServerProtocol(extensions=_deflate(options), select_subprotocol=select)
    accept, extensions, subprotocol = ours.process_request(_request(**headers))
    assert _upgrade_response(accept, extensions, subprotocol, "trio_rt") == response.serialize()
    assert (extensions is not None) == compression
    del response.headers["Server"]
    assert _upgrade_response(accept, extensions, subprotocol, None) == response.serialize()


def test_the_date_is_formatdate_of_the_current_second(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_790_000_000.2]
    monkeypatch.setattr(time, "time", lambda: now[0])
    assert _http_date() == email.utils.formatdate(usegmt=True)
    now[0] += 0.7  # the same second: the cached text
    assert _http_date() == email.utils.formatdate(usegmt=True)
    now[0] += 0.2  # the next second: formatted again
    assert _http_date() == email.utils.formatdate(usegmt=True)
    assert _http_date().endswith("GMT")


async def _exchange(manager: WebSocketManager, head: str) -> bytes:
    """Send a request head; return the response up to its blank line at least."""
    with trio.fail_after(10):  # a deadlock guard
        stream = await trio.open_tcp_stream(*manager.address)
        async with stream:
            await stream.send_all(head.encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some()
                if not chunk:
                    break
                data += chunk
    return data


def _head(*headers: str) -> str:
    return "\r\n".join(["GET / HTTP/1.1", "Host: x", *headers]) + "\r\n\r\n"


async def test_a_live_upgrade_negotiates_as_websockets_does(make_manager: MakeManager) -> None:
    manager = make_manager(compression=True, subprotocols=["chat"])
    async with manager:
        head = await _exchange(
            manager,
            _head(
                "Upgrade: websocket",
                "Connection: keep-alive, Upgrade",
                f"Sec-WebSocket-Key: {KEY}",
                "Sec-WebSocket-Version: 13",
                "Sec-WebSocket-Protocol: bearer.abc, chat",
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
            ),
        )
    status, *lines = head.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    assert status == "HTTP/1.1 101 Switching Protocols"
    fields = dict(line.split(": ", 1) for line in lines)
    assert list(fields) == [
        "Date",
        "Upgrade",
        "Connection",
        "Sec-WebSocket-Accept",
        "Sec-WebSocket-Extensions",
        "Sec-WebSocket-Protocol",
        "Server",
    ]
    assert fields["Sec-WebSocket-Accept"] == accept_key(KEY)
    assert fields["Sec-WebSocket-Protocol"] == "chat"
    assert fields["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
    assert fields["Server"] == "trio_rt"
    assert email.utils.parsedate_to_datetime(fields["Date"]) is not None


@pytest.mark.parametrize(
    ("headers", "status", "says"),
    [
        (
            ("Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13"),
            "400",
            "Sec-WebSocket-Key",
        ),
        (
            (
                "Upgrade: websocket",
                "Connection: Upgrade",
                "Sec-WebSocket-Key: short",
                "Sec-WebSocket-Version: 13",
            ),
            "400",
            "Sec-WebSocket-Key",
        ),
        (
            (
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {KEY}",
                "Sec-WebSocket-Version: 8",
            ),
            "400",
            "Sec-WebSocket-Version",
        ),
        (
            ("Upgrade: websocket", f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Version: 13"),
            "426",
            "Connection",
        ),
    ],
)
async def test_invalid_upgrades_get_websockets_refusal(
    make_manager: MakeManager, headers: tuple[str, ...], status: str, says: str
) -> None:
    manager = make_manager()
    async with manager:
        response = await _exchange(manager, _head(*headers))
        assert response.startswith(f"HTTP/1.1 {status} ".encode())
        # the registration made for the handshake is undone
        await wait_until(lambda: not manager.connections)
        assert manager.stats.connections_opened == 0
    assert says.encode() in response  # websockets' own answer names the header


async def test_a_valid_upgrade_skips_websockets_parse_and_accept(
    make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast paths serve a valid upgrade: websockets' request parser and `accept` (kept for
    everything else) are not used."""

    def accept(self: ServerProtocol, request: WsRequest) -> None:
        raise AssertionError("websockets' accept called for a valid upgrade")

    monkeypatch.setattr(ServerProtocol, "accept", accept)
    parsed: list[object] = []
    parse_headers = http11.parse_headers

    def headers_parsed(read_line: Any) -> Any:
        parsed.append(read_line)  # websockets' parser got past the request line
        return (yield from parse_headers(read_line))

    monkeypatch.setattr(http11, "parse_headers", headers_parsed)
    manager = make_manager()
    async with manager:
        head = await _exchange(
            manager,
            _head(
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {KEY}",
                "Sec-WebSocket-Version: 13",
            ),
        )
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert manager.stats.connections_opened == 1
        assert parsed == []  # the request was parsed in one pass

        # A head that comes in two reads is websockets' to parse, and upgrades the same.
        with trio.fail_after(10):  # a deadlock guard
            stream = await trio.open_tcp_stream(*manager.address)
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
                await wait_until(lambda: parsed != [])
                await stream.send_all(
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n".encode()
                )
                data = b""
                while b"\r\n\r\n" not in data:
                    data += await stream.receive_some()
        assert data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")


# -- the request's fast path (`parse_request_head`) ------------------------------------------


def _websockets_parse(data: bytes) -> WsRequest | None:
    """The request websockets' own parser delivers for `data` (None: none, or refused)."""
    protocol = ServerProtocol()
    protocol.receive_data(data)
    events = protocol.events_received()
    if protocol.handshake_exc is not None or not events:
        return None
    request = events[0]
    assert isinstance(request, WsRequest)
    return request


UPGRADE = (
    b"GET /chat?room=a&x= HTTP/1.1\r\nHost: example.com:8080\r\nUpgrade: websocket\r\n"
    b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nOrigin: https://example.com\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"Sec-WebSocket-Protocol: bearer.abc, trio_rt.v1\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n"
)


@pytest.mark.parametrize(
    "data",
    [
        UPGRADE,
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-Blank:\r\nX-Pad: \t a b \t \r\nX-Latin: caf\xe9\r\n\r\n",
        b"GET /a\rb HTTP/1.1\r\nHost: x\r\n\r\n",  # websockets does not check the path
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(128)) + b"\r\n",
    ],
)
def test_a_request_head_parses_as_websockets_parses_it(data: bytes) -> None:
    ours = parse_request_head(data)
    assert ours is not None
    assert ours == _websockets_parse(data)
    assert list(ours.headers.raw_items()) == list(_websockets_parse(data).headers.raw_items())  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "data",
    [
        UPGRADE[:-2],  # not the whole head yet
        UPGRADE + b"\x81\x80abcd",  # bytes after it (a frame sent too early)
        UPGRADE + UPGRADE,
        b"POST / HTTP/1.1\r\nHost: x\r\n\r\n",  # websockets takes it; the slow path serves it
        b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost x\r\n\r\n",  # no colon
        b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",  # not a token
        b"GET / HTTP/1.1\r\n: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\x00y\r\n\r\n",  # a control character
        b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",  # a bare LF: websockets splits there
        b"GET / HTTP/1.1\r\n\r\n\r\n",
        b"GET /\xe9 HTTP/1.1\r\nHost: x\r\n\r\n",  # not ASCII
        b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n",
        b"GET  HTTP/1.1\r\n\r\n".replace(b"  ", b" "),  # two words
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(129)) + b"\r\n",
        b"GET / HTTP/1.1\r\nX: " + b"v" * 9000 + b"\r\n\r\n",  # over websockets' line limit
    ],
)
def test_anything_else_is_left_to_websockets(data: bytes) -> None:
    assert parse_request_head(data) is None


@given(
    st.lists(
        st.tuples(
            st.text(alphabet="Aa-_ :\t!~\x7f", min_size=0, max_size=6),
            st.binary(max_size=8) | st.sampled_from([b"websocket", b" x ", b"\t", b""]),
        ),
        max_size=6,
    ),
    st.sampled_from([b"GET / HTTP/1.1", b"GET /x?y HTTP/1.1", b"GET / HTTP/1.0", b"GET /"]),
)
@settings(max_examples=300, deadline=None)
def test_the_fast_parse_never_disagrees_with_websockets(
    lines: list[tuple[str, bytes]], request_line: bytes
) -> None:
    data = request_line + b"\r\n"
    data += b"".join(name.encode() + b":" + value + b"\r\n" for name, value in lines) + b"\r\n"
    ours = parse_request_head(data)
    if ours is not None:
        theirs = _websockets_parse(data)
        assert theirs is not None
        assert ours == theirs
        assert list(ours.headers.raw_items()) == list(theirs.headers.raw_items())


# -- the upgrade's checks (`_process_upgrade`) ------------------------------------------------


def _negotiate(
    negotiate: Callable[[ServerProtocol, WsRequest], object], data: bytes
) -> tuple[object, object, object, object]:
    """`negotiate`'s result (or the exception's type) and what it left on the protocol."""
    protocol = ServerProtocol(
        extensions=_deflate(ServerOptions(compression=True)),
        select_subprotocol=lambda p, offered: "chat" if "chat" in offered else None,
    )
    request = _websockets_parse(data)
    assert request is not None
    try:
        result: object = negotiate(protocol, request)
    except Exception as exc:
        result = type(exc)
    extensions = [type(e) for e in protocol.extensions]
    return result, protocol.origin, extensions, protocol.subprotocol


def _upgrade(*headers: str, request_line: str = "GET / HTTP/1.1") -> bytes:
    return ("\r\n".join([request_line, "Host: x", *headers]) + "\r\n\r\n").encode()


PLAIN = ("Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13")


@pytest.mark.parametrize(
    "data",
    [
        _upgrade(*PLAIN, f"Sec-WebSocket-Key: {KEY}"),
        _upgrade(
            "Upgrade: websocket",
            "Connection: keep-alive, Upgrade",
            "Sec-WebSocket-Version: 13",
            f"Sec-WebSocket-Key: {KEY}",
            "Origin: https://example.com",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
            "Sec-WebSocket-Protocol: bearer.x, chat",
        ),
        _upgrade(*PLAIN, f"Sec-WebSocket-Key: {KEY}", "Origin: a", "Origin: b"),  # raises
        _upgrade(*PLAIN, f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Extensions: x;;"),
    ],
)
def test_the_upgrade_checks_are_websockets_own(data: bytes) -> None:
    ours = _negotiate(_process_upgrade, data)
    assert ours[0] is not None  # the fast path decided
    assert ours == _negotiate(ServerProtocol.process_request, data)


@pytest.mark.parametrize(
    "data",
    [
        _upgrade(*PLAIN, f"Sec-WebSocket-Key: {KEY}", request_line="GET / HTTP/1.0"),
        _upgrade(*PLAIN, f"Sec-WebSocket-Key: {KEY}", request_line="POST / HTTP/1.1"),
        _upgrade(*PLAIN),  # no key
        _upgrade(*PLAIN, "Sec-WebSocket-Key: c2hvcnQ="),  # 5 bytes
        _upgrade(*PLAIN, "Sec-WebSocket-Key: not base64!!"),
        _upgrade(*PLAIN, f"Sec-WebSocket-Key: {KEY}", f"Sec-WebSocket-Key: {KEY}"),
        _upgrade(*PLAIN, f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Version: 13"),
        _upgrade("Upgrade: websocket", "Sec-WebSocket-Version: 13", f"Sec-WebSocket-Key: {KEY}"),
        _upgrade(
            "Upgrade: WebSocket",
            "Connection: upgrade, keep-alive",
            "Sec-WebSocket-Version: 13",
            f"Sec-WebSocket-Key: {KEY}",
        ),
        _upgrade(
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 8",
            f"Sec-WebSocket-Key: {KEY}",
        ),
    ],
)
def test_other_upgrades_are_left_to_websockets_checks(data: bytes) -> None:
    assert _negotiate(_process_upgrade, data)[0] is None

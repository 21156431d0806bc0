"""`default_is_fatal` and `retry_after`: which errors stop the client, how long a refused
handshake asks it to wait. Pure functions of an exception."""

from __future__ import annotations

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus
from websockets.frames import Close
from websockets.http11 import Response

from trio_rt.client import HeartbeatTimeout, ProtocolViolation, ReceiveOverflow, default_is_fatal
from trio_rt.client._fatal import retry_after


def closed(code: int | None) -> ConnectionClosed:
    return ConnectionClosed(Close(code, "") if code is not None else None, None)


def status(code: int) -> InvalidStatus:
    return InvalidStatus(Response(code, "x", Headers(), b""))


@pytest.mark.parametrize(
    ("error", "fatal"),
    [
        (closed(4003), True),
        (closed(1008), True),
        (closed(1002), True),
        (closed(1000), False),
        (closed(1001), False),
        (closed(1011), False),
        (closed(4000), False),
        (closed(4001), False),
        (closed(None), False),  # dropped without a close frame (1006)
        (status(401), True),
        (status(403), True),
        (status(404), True),
        (status(503), False),
        (status(429), False),
        (status(500), False),
        (ConnectionRefusedError(), False),
        (TimeoutError(), False),
        (ProtocolViolation("not a welcome"), True),
        (ValueError("bug in a headers provider"), True),
        (HeartbeatTimeout("no pong"), False),
        (ReceiveOverflow("the app is behind"), False),
    ],
)
def test_default_is_fatal(error: BaseException, fatal: bool) -> None:
    assert default_is_fatal(error) is fatal


def test_handshake_cut_short_by_the_server_is_transient() -> None:
    error = InvalidMessage("did not receive a valid HTTP response")
    error.__cause__ = EOFError("connection closed while reading HTTP status line")
    assert default_is_fatal(error) is False
    assert default_is_fatal(InvalidMessage("garbage")) is True


def refused(status_code: int, value: str | None = None) -> InvalidStatus:
    headers = Headers() if value is None else Headers([("Retry-After", value)])
    return InvalidStatus(Response(status_code, "x", headers, b""))


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("3", 3.0),
        ("0.5", 0.5),
        ("0", 0.0),
        ("-1", None),  # not a delay
        ("nan", None),
        ("inf", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),  # an HTTP date: not worth parsing
    ],
)
def test_retry_after_reads_usable_seconds(value: str, seconds: float | None) -> None:
    assert retry_after(refused(503, value)) == seconds


def test_retry_after_needs_a_refused_handshake_with_the_header() -> None:
    assert retry_after(None) is None
    assert retry_after(closed(1001)) is None
    assert retry_after(refused(503)) is None

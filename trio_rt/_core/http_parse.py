"""HTTP/1.1 for the server API's own listener, sans-IO: requests parsed from bytes, responses
rendered to bytes. Nothing here does I/O (trio_rt/_engine/server_api.py moves the bytes).

Only what an API needs, strictly: a request line, headers, a body of ``Content-Length``
bytes (``Transfer-Encoding`` is refused with 501: API clients send lengths), keep-alive as
HTTP/1.1 says (``Connection: close`` ends it; HTTP/1.0 closes unless it asks to keep alive).
Every limit is a refusal with a status, never unbounded buffering: the head (request line and
headers) at most `max_head` bytes (431), the body at most `max_body` bytes (413, before a byte
of it is read).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import TrioRTError

__all__ = ["HttpError", "HttpRequest", "RequestReader", "json_body", "render_response"]


class HttpError(TrioRTError):
    """A request that cannot be served: its `status`, error `code` and `message` (sent to
    the client), and response `headers`. `close`: the connection cannot be reused after it."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.close = close


@dataclass(slots=True)
class HttpRequest:
    """A parsed request: `headers` by lower-case name (the last value of a repeated one)."""

    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes = b""
    path: str = field(init=False)
    query: dict[str, list[str]] = field(init=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.target)
        self.path = unquote(parts.path)
        self.query = parse_qs(parts.query)

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


class RequestReader:
    """Bytes in (`feed`), requests out (`next_request`), one at a time, in order."""

    def __init__(self, *, max_head: int = 16_384, max_body: int = 65_536) -> None:
        self.max_head = max_head
        self.max_body = max_body
        self._buffer = bytearray()
        self._head: tuple[str, str, str, dict[str, str]] | None = None
        self._length = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def next_request(self) -> HttpRequest | None:
        """The next whole request, or None until more bytes arrive. Raises HttpError."""
        if self._head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > self.max_head:
                    raise HttpError(431, "too_large", "request head too large", close=True)
                return None
            if end > self.max_head:
                raise HttpError(431, "too_large", "request head too large", close=True)
            head = bytes(self._buffer[:end])
            del self._buffer[: end + 4]
            self._head = self._parse_head(head)
        method, target, version, headers = self._head
        if len(self._buffer) < self._length:
            return None
        body = bytes(self._buffer[: self._length])
        del self._buffer[: self._length]
        self._head = None
        return HttpRequest(method, target, version, headers, body)

    def _parse_head(self, head: bytes) -> tuple[str, str, str, dict[str, str]]:
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
            raise HttpError(400, "bad_request", "invalid request head", close=True) from None
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0") or not parts[1]:
            raise HttpError(400, "bad_request", "invalid request line", close=True)
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or " " in name:
                raise HttpError(400, "bad_request", "invalid header line", close=True)
            headers[name.lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise HttpError(
                501, "not_implemented", "send a Content-Length, not a transfer coding", close=True
            )
        raw_length = headers.get("content-length", "0")
        if not raw_length.isdigit():
            raise HttpError(400, "bad_request", "invalid Content-Length", close=True)
        length = int(raw_length)
        if length > self.max_body:
            raise HttpError(
                413,
                "too_large",
                f"the body is larger than {self.max_body} bytes",
                close=True,
            )
        self._length = length
        return method, target, version, headers


def render_response(
    status: int,
    body: bytes,
    *,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
    keep_alive: bool = True,
) -> bytes:
    """The bytes of an HTTP/1.1 response."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [
        f"HTTP/1.1 {status} {phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: " + ("keep-alive" if keep_alive else "close"),
    ]
    for name, value in (headers or {}).items():
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise ValueError("header names and values cannot contain line breaks")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def json_body(data: Any) -> bytes:
    """Compact JSON bytes (UTF-8)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()

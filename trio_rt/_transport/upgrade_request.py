"""The opening handshake's request parsed in one pass, sans-IO: `parse_request_head`.

websockets parses the request with generator-based coroutines (a generator per line, each
line read through its `StreamReader`), ~11 µs a handshake here, about 5 % of its CPU
(docs/performance.md). When the first bytes a connection receives are one whole request head
and nothing else (what every client sends), this parses them in one pass into the same
websockets `Request`, with the same checks and the same limits. Anything else (a partial head,
bytes after it, a line websockets would refuse, a limit reached, a method other than GET or
a protocol other than HTTP/1.1, a body announced) returns None, and the bytes go to
websockets' own parser, which answers as it always did (400, 414, 431, or the connection
closed): every refusal stays websockets'. tests/engine/test_upgrade_response.py compares both
parsers; tests/engine/test_websockets_internals.py hash-checks the upstream code mirrored.
"""

from __future__ import annotations

import re

from websockets.datastructures import Headers
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS
from websockets.http11 import Request as WsRequest

__all__ = ["parse_request_head"]

# A header line as websockets.http11's `parse_headers` reads it: a name matching its
# `_token_re`, a colon, a value matching its `_value_re` once stripped of spaces and tabs
# (both sides of the value are in that class: the whole rest of the line matches). Group 2 is
# the value without its leading blanks; its trailing ones are stripped after.
_HEADER = re.compile(rb"([-!#$%&\'*+.^_`|~0-9a-zA-Z]+):[ \t]*([\x09\x20-\x7e\x80-\xff]*)")


def parse_request_head(data: bytes | bytearray) -> WsRequest | None:
    """`data` as websockets' `Request.parse` would return it, when `data` is exactly one GET
    HTTP/1.1 request head (up to and including its blank line) that websockets accepts without
    a body; else None (websockets parses it). A head longer than websockets' line limit is left
    to websockets (each of its lines is then within that limit)."""
    if (
        len(data) > MAX_LINE_LENGTH
        or not data.endswith(b"\r\n\r\n")
        or data.count(b"\n") != data.count(b"\r\n")  # websockets splits at LF: lines alike
    ):
        return None
    lines = data[:-4].split(b"\r\n")
    if len(lines) > MAX_NUM_HEADERS + 1:
        return None
    request_line = lines[0].split(b" ", 2)
    if len(request_line) != 3 or request_line[0] != b"GET" or request_line[2] != b"HTTP/1.1":
        return None
    try:
        path = request_line[1].decode("ascii")
    except UnicodeDecodeError:
        return None
    by_name: dict[str, list[str]] = {}
    items: list[tuple[str, str]] = []
    header = _HEADER.fullmatch
    for line in lines[1:]:
        match = header(line)
        if match is None:
            return None
        name = match[1].decode("ascii")
        value = match[2].rstrip(b" \t").decode("iso-8859-1")
        # Headers.set_insecure's two steps, without a method call per header.
        by_name.setdefault(name.lower(), []).append(value)
        items.append((name, value))
    headers = Headers()
    headers._dict = by_name  # what set_insecure fills: lower-case name -> values
    headers._list = items  # (name, value) in order
    if "Transfer-Encoding" in headers or not set(headers.get_all("Content-Length")) <= {"0"}:
        return None
    return WsRequest(path, headers, "GET", "HTTP/1.1")

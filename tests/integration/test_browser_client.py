"""The browser client: served at GET /trio_rt.js, and its logic unit-tested with `node --test`."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_rt import WebSocketManager

from .prerequisites import require

ROOT = Path(__file__).resolve().parents[2]
JS_TESTS = ROOT / "tests" / "js"


async def http_get(
    manager: WebSocketManager, path: str, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 GET on the manager's port (no client library: headers as sent)."""
    host, port = manager.address
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    out: dict[str, str] = {}
    for line in header_lines:
        k, _, v = line.partition(":")
        assert k.lower() not in out, f"duplicate header {k}"
        out[k.lower()] = v.strip()
    return int(status_line.split()[1]), out, body


async def test_client_js_is_served_with_etag_and_revalidation(
    make_manager: Callable[..., WebSocketManager],
) -> None:
    async with make_manager() as manager:
        status, headers, body = await http_get(manager, "/trio_rt.js")
        assert status == 200
        assert headers["content-type"] == "text/javascript; charset=utf-8"
        assert headers["cache-control"] == "no-cache"
        assert body == (ROOT / "trio_rt" / "static" / "trio_rt.js").read_bytes()
        assert b"export class TrioRtClient" in body
        etag = headers["etag"]
        status, headers, body = await http_get(manager, "/trio_rt.js", **{"If-None-Match": etag})
        assert (status, body, headers["etag"]) == (304, b"", etag)
        status, _, _ = await http_get(manager, "/trio_rt.js", **{"If-None-Match": '"other"'})
        assert status == 200
        # Other routes keep the no-store default.
        status, headers, _ = await http_get(manager, "/health")
        assert (status, headers["cache-control"]) == (200, "no-store")


async def test_client_js_route_can_be_turned_off(
    make_manager: Callable[..., WebSocketManager],
) -> None:
    async with make_manager(serve_client_js=False) as manager:
        status, _, _ = await http_get(manager, "/trio_rt.js")
        assert status == 404


def test_serve_client_js_option_is_validated() -> None:
    with pytest.raises(ValueError, match="serve_client_js"):
        WebSocketManager(serve_client_js="yes")


def test_node_unit_tests() -> None:
    require("node")  # missing: a failure naming the install command (or the opt-out)
    node = shutil.which("node")
    assert node is not None
    files = sorted(str(p) for p in JS_TESTS.glob("*.test.mjs"))
    assert files, "no JS tests found"
    result: subprocess.CompletedProcess[Any] = subprocess.run(
        [node, "--test", *files], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout

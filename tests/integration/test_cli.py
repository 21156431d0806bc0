"""The `trio-rt` command as a user runs it: a real process, real clients, real signals."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import connect

READY = re.compile(rb"listening on ws://([\d.]+):(\d+)/")
ROOT = Path(__file__).resolve().parents[2]


# `python -m trio_rt` as it runs on a core install: no extra can be imported (tests/core_only.py).
CORE_ONLY = ("-m", "tests.core_only", "-m", "trio_rt")


@asynccontextmanager
async def cli(
    *args: str, python: tuple[str, ...] = ("-m", "trio_rt"), output: list[bytes] | None = None
) -> AsyncIterator[tuple[trio.Process, str]]:
    """Run ``python -m trio_rt ARGS`` and yield (process, ws url) once it is listening.
    `output` (if given) receives everything the process wrote, once it has exited."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, *python, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    out = b""
    try:
        with trio.fail_after(30):
            while not (m := READY.search(out)):
                chunk = await proc.stdout.receive_some()
                assert chunk, f"trio-rt exited early: {out.decode()}"
                out += chunk
        yield proc, f"ws://{m.group(1).decode()}:{m.group(2).decode()}/"
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        if output is not None:
            with trio.fail_after(10):
                while chunk := await proc.stdout.receive_some():
                    out += chunk
            output.append(out)


async def recv_json(ws: Any) -> dict[str, Any]:
    with trio.fail_after(10):
        data = json.loads(await ws.recv())
    assert isinstance(data, dict)
    return data


async def test_demo_two_clients_chat_in_a_room_then_sigterm_closes_1001() -> None:
    async with cli("demo", "--host", "127.0.0.1", "--port", "0") as (proc, url):
        async with connect(url + "?user=ann") as ann, connect(url + "?user=bob") as bob:
            for ws in (ann, bob):
                assert (await recv_json(ws))["type"] == "welcome"
                await ws.send(json.dumps({"type": "join_room", "room": "chat:general"}))
                assert (await recv_json(ws))["type"] == "room_joined"
            await ann.send(
                json.dumps(
                    {
                        "type": "chat_message",
                        "payload": {"room": "chat:general", "message": "hi bob"},
                    }
                )
            )
            for ws in (ann, bob):
                msg = await recv_json(ws)
                assert msg["type"] == "chat_message"
                assert msg["data"]["user_id"] == "ann" and msg["data"]["message"] == "hi bob"
                assert msg["data"]["timestamp"].endswith("Z")
            # bad input: a clear error, the connection survives
            await bob.send(
                json.dumps(
                    {"type": "chat_message", "payload": {"room": "elsewhere", "message": "x"}}
                )
            )
            err = await recv_json(bob)
            assert err["type"] == "error" and err["code"] == "not_in_room"
            proc.send_signal(signal.SIGTERM)
            for ws in (ann, bob):
                with pytest.raises(ConnectionClosed) as info:
                    await recv_json(ws)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        with trio.fail_after(20):
            assert await proc.wait() == 0


async def test_serve_module_attr_and_sigint() -> None:
    args = ("serve", "trio_rt_examples.chat:build_app", "--port", "0")
    async with cli(*args) as (proc, url):
        async with connect(url) as ws:
            welcome = await recv_json(ws)
            assert welcome["user_id"].startswith("guest-")
            proc.send_signal(signal.SIGINT)
            with pytest.raises(ConnectionClosed):
                await recv_json(ws)
        with trio.fail_after(20):
            assert await proc.wait() == 0


async def test_bad_command_lines_fail_clearly() -> None:
    for args, expected in [
        (["serve", "nosuch_module:app"], b"cannot import 'nosuch_module'"),
        (["serve", "no_colon"], b"expected module:attribute"),
        (["serve", "trio_rt:__version__"], b"neither a WebSocketManager nor a factory"),
        (["demo", "--port", "70000"], b"port must be an integer in 0..65535"),
    ]:
        result = await trio.run_process(
            [sys.executable, "-m", "trio_rt", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert result.returncode != 0
        assert expected in result.stderr, result.stderr


async def http_get(url: str, path: str) -> tuple[int, bytes]:
    """One plain GET on the server at ws `url` (host:port), without a client library."""
    host, _, port = url.removeprefix("ws://").rstrip("/").partition(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        await stream.send_all(request.encode())
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some():
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_demo_on_a_core_install_join_chat_leave_and_says_what_is_off() -> None:
    """No extra installed: the demo runs on the memory backends, without the posts board and
    the dev tokens, and its page config says what is off and how to turn it on."""
    output: list[bytes] = []
    async with cli(
        "demo", "--host", "127.0.0.1", "--port", "0", python=CORE_ONLY, output=output
    ) as (
        proc,
        url,
    ):
        async with connect(url + "?user=ann") as ann:
            assert (await recv_json(ann))["user_id"] == "ann"
            await ann.send(json.dumps({"type": "join_room", "room": "chat:general"}))
            assert (await recv_json(ann))["type"] == "room_joined"
            await ann.send(
                json.dumps(
                    {"type": "chat_message", "payload": {"room": "chat:general", "message": "hi"}}
                )
            )
            said = await recv_json(ann)
            assert said["type"] == "chat_message" and said["data"]["message"] == "hi"
            await ann.send(json.dumps({"type": "leave_room", "room": "chat:general"}))
            assert (await recv_json(ann))["type"] == "room_left"
        status, body = await http_get(url, "/demo/config")
        config = json.loads(body)
        assert status == 200 and config["posts"] is False and config["tokens"] is False
        off = " ".join(config["off"])
        assert "--cassandra HOST:PORT" in off and "pip install 'trio_rt[cassandra]'" in off
        assert "pip install 'trio_rt[auth]'" in off
        assert (await http_get(url, "/token?name=ann"))[0] == 404
        assert (await http_get(url, "/"))[0] == 200
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            assert await proc.wait() == 0
    assert b"Traceback" not in output[0], output[0].decode()


async def test_demo_posts_board_without_the_cassandra_extra_fails_clearly() -> None:
    result = await trio.run_process(
        [sys.executable, *CORE_ONLY, "demo", "--port", "0", "--cassandra", "127.0.0.1:9042"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode != 0
    assert b"pip install 'trio_rt[cassandra]'" in result.stderr, result.stderr
    assert b"Traceback" not in result.stderr, result.stderr

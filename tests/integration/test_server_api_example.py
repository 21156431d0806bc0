"""examples/server_api.py and examples/server_api_publish.mjs: a backend in another language
publishes into a room with nothing but Node's standard ``fetch``; a WebSocket member of the
room gets it, and the script prints the server's answer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import trio
from trio_rt_examples.server_api import build_app

from ..conftest import client
from .prerequisites import require

ROOT = Path(__file__).resolve().parents[2]
KEY = "example-key-0123456789"


async def test_node_fetch_publishes_into_a_room(monkeypatch: pytest.MonkeyPatch) -> None:
    require("node")
    node = shutil.which("node")
    assert node is not None
    monkeypatch.setenv("TRIO_RT_API_KEY", KEY)
    monkeypatch.setenv("TRIO_RT_API_PORT", "0")
    manager = build_app(host="127.0.0.1", port=0, heartbeat_interval=None)
    async with manager, client(manager) as member:
        joined = await member.request({"type": "join_room", "room": "lobby"})
        assert joined["type"] == "room_joined"
        api = manager.server_api  # type: ignore[attr-defined]
        script = str(ROOT / "examples" / "server_api_publish.mjs")
        with trio.fail_after(60):  # deadlock guard only
            done = await trio.run_process(
                [node, script, api.url, KEY, "lobby", "hello from node"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["room"] == "lobby" and answer["position"]["offset"] == 1
        got = await member.recv()
        assert got["type"] == "publication"
        assert got["data"] == {"text": "hello from node", "from": "node"}
        assert got["position"] == answer["position"]
        # A wrong key: the script reports the refusal and fails.
        with trio.fail_after(60):
            refused = await trio.run_process(
                [node, script, api.url, "wrong-key-0123456789", "lobby", "x"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        assert refused.returncode == 1 and b"401 unauthorized" in refused.stderr

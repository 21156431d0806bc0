"""The demo page in a real browser: Debian's Chromium driven by Playwright (never a downloaded
browser). The server runs here, in Trio; the browser side (tests/integration/browser_scenarios.py)
runs in a subprocess and asks for server actions (stop, start) over its stdin/stdout. Every wait is
for a DOM condition.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_rt_examples import chat

from trio_rt import WebSocketManager
from trio_rt.cassandra import CassandraSession
from trio_rt.testing.services import CassandraEndpoint

from .prerequisites import require

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow]


@pytest.fixture(autouse=True)
def _chromium_and_playwright() -> None:
    # Missing: a failure naming the install command (TRIO_RT_SKIP_BROWSER=1 skips instead).
    require("chromium", "playwright")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class DemoServer:
    """The chat demo on a fixed port, which can be stopped and started again (a new process's
    worth of state: new server id, new token secret, no memory of the old rooms)."""

    def __init__(self, nursery: trio.Nursery, port: int, **app_options: Any) -> None:
        self.nursery = nursery
        self.port = port
        self.app_options = app_options
        self.manager: WebSocketManager | None = None
        self._done = trio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def start(self) -> None:
        self.manager = chat.build_app(
            host="127.0.0.1", port=self.port, shutdown_timeout=5, **self.app_options
        )
        self._done = trio.Event()
        await self.nursery.start(self._serve, self.manager, self._done)

    @staticmethod
    async def _serve(
        manager: WebSocketManager, done: trio.Event, *, task_status: trio.TaskStatus[Any]
    ) -> None:
        try:
            await manager.serve(task_status=task_status)
        finally:
            done.set()

    async def drop_bob(self) -> None:
        """Close Bob's connections from the server with 1011 (the client reconnects)."""
        assert self.manager is not None
        for conn in list(self.manager.connections.values()):
            if conn.user_id == "bob":
                await conn.close(1011, "dropped by the test")

    async def stop(self) -> None:
        assert self.manager is not None
        self.manager.stop()
        await self._done.wait()


async def run_scenario(name: str, server: DemoServer, workdir: Path) -> list[str]:
    """Run a browser scenario against `server`; returns its output lines. Fails the test
    with the scenario's output when it fails."""
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "tests.integration.browser_scenarios",
            name,
            server.url,
            str(workdir),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    actions = {"stop": server.stop, "start": server.start, "drop bob": server.drop_bob}
    lines: list[str] = []
    buffer = b""
    try:
        while chunk := await process.stdout.receive_some(65536):
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                line = raw.decode()
                lines.append(line)
                print(line)
                if line.startswith("@@ ") and line[3:] in actions:
                    await actions[line[3:]]()
                    await process.stdin.send_all(b"done\n")
        status = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            await process.stdin.aclose()
            await process.stdout.aclose()
    assert status == 0 and "@@ passed" in lines, "\n".join(lines)
    return lines


async def test_two_pages_chat_and_a_screenshot(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        server = DemoServer(nursery, free_port())
        await server.start()
        lines = await run_scenario("two_pages_chat", server, tmp_path)
        assert any(line.startswith("demo screenshot: ") for line in lines)
        assert (ROOT / "artifacts" / "demo.png").stat().st_size > 0
        await server.stop()


async def test_pages_reconnect_after_a_server_restart(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        server = DemoServer(nursery, free_port())
        await server.start()
        lines = await run_scenario("restart", server, tmp_path)
        assert "@@ stop" in lines and "@@ start" in lines
        await server.stop()


async def test_messages_stay_in_position_order_across_a_restart(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        server = DemoServer(nursery, free_port())
        await server.start()
        lines = await run_scenario("restart_order", server, tmp_path)
        assert "@@ stop" in lines and "@@ start" in lines
        await server.stop()


async def test_the_login_form_states_the_name_rule(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        server = DemoServer(nursery, free_port())
        await server.start()
        await run_scenario("login_rules", server, tmp_path)
        await server.stop()


async def test_the_page_without_dev_tokens(tmp_path: Path) -> None:
    """As on a core install (no `auth` extra): the page connects with ?user=."""
    async with trio.open_nursery() as nursery:
        server = DemoServer(nursery, free_port(), tokens=False)
        await server.start()
        await run_scenario("core_install", server, tmp_path)
        await server.stop()


async def test_a_page_recovers_what_it_missed_on_the_same_server(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        server = DemoServer(nursery, free_port())
        await server.start()
        lines = await run_scenario("recover", server, tmp_path)
        assert "@@ drop bob" in lines
        await server.stop()


async def test_the_posts_board_shows_changes_from_cassandra(
    tmp_path: Path, cassandra_endpoint: CassandraEndpoint, session: CassandraSession
) -> None:
    keyspace = "demo_" + uuid.uuid4().hex[:10]
    endpoint = f"{cassandra_endpoint.host}:{cassandra_endpoint.port}"
    try:
        async with trio.open_nursery() as nursery:
            server = DemoServer(nursery, free_port(), cassandra=endpoint, keyspace=keyspace)
            await server.start()
            lines = await run_scenario("posts", server, tmp_path)
            assert any(line.startswith("posts screenshot: ") for line in lines)
            await server.stop()
    finally:
        await session.drop_keyspace(keyspace)

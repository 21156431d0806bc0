"""The demo page in a real browser: Debian's Chromium driven by Playwright (never a downloaded
browser). The server runs in Trio; Playwright's sync API runs in a worker thread
(`trio.to_thread.run_sync`) with its own event loop and calls back into Trio with
`trio.from_thread.run` to stop and start servers. Every wait is for a DOM condition.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_rt_examples import chat

from trio_rt import WebSocketManager

playwright_sync = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (it is in the dev extra)"
)
CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)",
    ),
]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
# Exactly these browser flags; Playwright's own defaults are off (ignore_default_args), so the
# only other arguments are the two it needs to drive the browser: a fresh profile directory
# and the DevTools pipe.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000  # a hang guard for each DOM wait, not a performance assertion


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class DemoServer:
    """The chat demo on a fixed port, which can be stopped and started again (a new process's
    worth of state: new server id, new token secret, no memory of the old rooms)."""

    def __init__(self, nursery: trio.Nursery, port: int) -> None:
        self.nursery = nursery
        self.port = port
        self.manager: WebSocketManager | None = None
        self._done = trio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def start(self) -> None:
        self.manager = chat.build_app(host="127.0.0.1", port=self.port, shutdown_timeout=5)
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

    async def stop(self) -> None:
        assert self.manager is not None
        self.manager.stop()
        await self._done.wait()


@contextmanager
def browser(tmp_path: Path) -> Iterator[Any]:
    """A Chromium with a fresh profile in `tmp_path`; yields a new browser context."""
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            ignore_default_args=True,
            args=[
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-pipe",
                "--no-startup-window",
            ],
        )
        try:
            context = b.new_context(viewport={"width": 1280, "height": 720})
            context.set_default_timeout(TIMEOUT_MS)
            yield context
            context.close()
        finally:
            b.close()


class Page:
    """One person on the demo page, in DOM terms."""

    def __init__(self, context: Any, url: str, name: str) -> None:
        self.errors: list[str] = []
        self.page = context.new_page()
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.goto(url)
        self.page.fill("#name", name)
        self.page.click("#login button")
        self.wait_state("open")

    def wait_state(self, state: str) -> None:
        self.page.wait_for_selector(f'#state[data-state="{state}"]')

    def wait_not_open(self) -> None:
        self.page.wait_for_selector('#state:not([data-state="open"])')

    def open_room(self, room: str) -> None:
        self.page.click(f'#rooms button[data-room="{room}"]')
        self.page.wait_for_selector("#text:not([disabled])")

    def say(self, text: str) -> None:
        self.page.fill("#text", text)
        self.page.press("#text", "Enter")

    def wait_message(self, text: str, user: str | None = None) -> None:
        item = self.page.locator("#messages li.msg", has_text=text)
        if user is not None:
            item = item.filter(has=self.page.locator(".user", has_text=user))
        item.first.wait_for()

    def messages(self) -> list[str]:
        texts: list[str] = self.page.locator("#messages li.msg .text").all_inner_texts()
        return texts


async def run_in_browser(tmp_path: Path, fn: Callable[[Any], None]) -> None:
    def run() -> None:
        with browser(tmp_path) as context:
            fn(context)

    await trio.to_thread.run_sync(run)


async def test_two_pages_chat_and_a_screenshot(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        server = DemoServer(nursery, free_port())
        await server.start()

        def scenario(context: Any) -> None:
            ann = Page(context, server.url, "ann")
            bob = Page(context, server.url, "bob")
            for p in (ann, bob):
                p.open_room("chat:general")
            ann.say("hello bob")
            bob.wait_message("hello bob", user="ann")
            bob.say("hi ann <b>not bold</b>")
            ann.wait_message("hi ann <b>not bold</b>", user="bob")  # text, never HTML
            assert ann.page.locator("#messages b").count() == 0
            assert ann.messages() == ["hello bob", "hi ann <b>not bold</b>"]
            # The metrics panel polls /demo/stats: both pages are connected.
            ann.page.wait_for_selector('[data-metric="connections"]:text-is("2")')
            ann.page.wait_for_selector("#posts[hidden]", state="attached")  # no change streams
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "demo.png"
            ann.page.screenshot(path=str(shot))
            print(f"demo screenshot: {shot}")
            assert shot.stat().st_size > 0
            assert ann.errors == [] and bob.errors == []

        await run_in_browser(tmp_path, scenario)
        await server.stop()


async def test_pages_reconnect_after_a_server_restart(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        server = DemoServer(nursery, free_port())
        await server.start()

        def scenario(context: Any) -> None:
            ann = Page(context, server.url, "ann")
            bob = Page(context, server.url, "bob")
            for p in (ann, bob):
                p.open_room("chat:general")
            ann.say("before the restart")
            bob.wait_message("before the restart")
            old_id = ann.page.inner_text("#server-id")

            trio.from_thread.run(server.stop)  # graceful: close code 1001
            ann.wait_not_open()
            bob.wait_not_open()
            # Ann writes while offline: queued in the browser client's outbox. Her page cannot
            # get a token until Bob is back, so Bob has rejoined before her queue is written.
            ann.page.route("**/token*", lambda route: route.abort())
            ann.say("written while offline")

            trio.from_thread.run(server.start)  # a new server on the same port
            bob.wait_state("open")
            ann.page.unroute("**/token*")
            ann.wait_state("open")
            assert ann.page.inner_text("#server-id") != old_id
            # Both pages rejoined chat:general by themselves and see what was queued.
            bob.wait_message("written while offline", user="ann")
            ann.wait_message("written while offline", user="ann")
            bob.say("after the restart")
            ann.wait_message("after the restart", user="bob")
            # Nothing shown twice.
            assert bob.messages().count("written while offline") == 1
            assert ann.errors == [] and bob.errors == []

        await run_in_browser(tmp_path, scenario)
        await server.stop()

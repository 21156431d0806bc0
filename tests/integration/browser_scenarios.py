"""The browser side of tests/integration/test_browser.py, run as a subprocess (own process, own
asyncio loop for Playwright's sync API: the test process may have trio-asyncio's global loop
policy).

``python -m tests.integration.browser_scenarios SCENARIO URL WORKDIR`` drives Debian's Chromium;
it asks the test to act on the server by printing ``@@ <action>`` and waiting for one line on
stdin. Exit status 0: the scenario passed. Every wait is for a DOM condition (TIMEOUT_MS is a hang
guard, not a performance assertion).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from playwright.sync_api import BrowserContext, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
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
TIMEOUT_MS = 60_000


def ask(action: str) -> None:
    """Ask the test process to do `action` on the server; returns once it is done."""
    print(f"@@ {action}", flush=True)
    reply = sys.stdin.readline().strip()
    if reply != "done":
        raise RuntimeError(f"the test answered {reply!r} to {action!r}")


@contextmanager
def browser(workdir: Path) -> Iterator[BrowserContext]:
    """Debian's Chromium with a fresh profile in `workdir`; yields a new browser context."""
    chromium = shutil.which("chromium")
    assert chromium is not None
    profile = workdir / "chromium-profile"
    profile.mkdir()
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=chromium,
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

    def __init__(self, context: BrowserContext, url: str, name: str) -> None:
        self.errors: list[str] = []
        self.page = context.new_page()
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.goto(url)
        self.page.fill("#name", name)
        self.page.click("#login button")
        self.wait_state("open")
        assert self.page.inner_text("#state") == "connected"

    def wait_state(self, state: str) -> None:
        self.page.wait_for_selector(f'#state[data-state="{state}"]')

    def wait_notice_gone(self) -> None:
        """Notices go away by themselves (after NOTICE_MS in app.js)."""
        self.page.wait_for_selector("#notice:empty", state="attached")

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
        return self.page.locator("#messages li.msg .text").all_inner_texts()


def two_pages_chat(context: BrowserContext, url: str) -> None:
    ann = Page(context, url, "ann")
    bob = Page(context, url, "bob")
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
    ann.page.wait_for_selector("#posts[hidden]", state="attached")  # no change streams here
    # ... and the page says so, and how to turn it on.
    off = ann.page.inner_text("#off-list")
    assert "Posts board: off" in off and "--cassandra HOST:PORT" in off, off
    assert "Sign-in tokens" not in off  # the dev tokens are on
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "demo.png"
    ann.page.screenshot(path=str(shot))
    print(f"demo screenshot: {shot}", flush=True)
    assert shot.stat().st_size > 0
    assert ann.errors == [] and bob.errors == []


def restart(context: BrowserContext, url: str) -> None:
    ann = Page(context, url, "ann")
    bob = Page(context, url, "bob")
    for p in (ann, bob):
        p.open_room("chat:general")
    ann.say("before the restart")
    bob.wait_message("before the restart")
    old_id = ann.page.inner_text("#server-id")

    ask("stop")  # graceful: close code 1001
    ann.wait_not_open()
    bob.wait_not_open()
    # Ann writes while offline: queued in the browser client's outbox, written after her
    # rejoin. Bob's page gets no token until Ann has written more: he misses all of it.
    bob.page.route("**/token*", lambda route: route.abort())
    ann.say("written while offline")

    ask("start")  # a new server on the same port: new in-memory history, new epoch
    ann.wait_state("open")
    assert ann.page.inner_text("#server-id") != old_id
    ann.wait_message("written while offline", user="ann")
    ann.say("while bob was away")
    ann.wait_message("while bob was away", user="ann")
    bob.page.unroute("**/token*")
    bob.wait_state("open")
    # Bob rejoined with `since` from the old server: the epoch changed, so the server answers
    # recovered:false; the client refetches the history, and the page shows what he missed.
    bob.wait_message("written while offline", user="ann")
    bob.wait_message("while bob was away", user="ann")
    # recovery_failed (epoch_changed), said in plain words; the notice then goes away.
    assert bob.page.inner_text("#notice").startswith("The server restarted while you were away.")
    bob.wait_notice_gone()
    bob.say("after the restart")
    ann.wait_message("after the restart", user="bob")
    for text in ("before the restart", "written while offline", "while bob was away"):
        assert bob.messages().count(text) == 1, (text, bob.messages())  # each shown once
    assert ann.errors == [] and bob.errors == []


def restart_order(context: BrowserContext, url: str) -> None:
    """Messages stay in position order across a restart: "one", "two", the server stops, Ann
    types "three" while her page reconnects, the server starts again (a new epoch): every page
    shows one, two, three. (The page once put the new server's history first: three, one,
    two, and the two pages disagreed.)"""
    ann = Page(context, url, "ann")
    bob = Page(context, url, "bob")
    for p in (ann, bob):
        p.open_room("chat:general")
    ann.say("one")
    ann.say("two")
    for p in (ann, bob):
        p.wait_message("two", user="ann")
    ask("stop")
    ann.wait_not_open()
    bob.wait_not_open()
    # Bob comes back only once "three" is in the new server's history: his page merges that
    # history with the two messages it already shows.
    bob.page.route("**/token*", lambda route: route.abort())
    ann.say("three")
    ask("start")
    ann.wait_state("open")
    ann.wait_message("three", user="ann")
    bob.page.unroute("**/token*")
    bob.wait_state("open")
    bob.wait_message("three", user="ann")
    for p in (ann, bob):
        assert p.messages() == ["one", "two", "three"], p.messages()
    # A message after the restart goes after them on both pages.
    bob.say("four")
    for p in (ann, bob):
        p.wait_message("four", user="bob")
        assert p.messages() == ["one", "two", "three", "four"], p.messages()
    assert ann.errors == [] and bob.errors == []


def login_rules(context: BrowserContext, url: str) -> None:
    """A bad name gets the demo's rule in words (not the browser's generic "Please match the
    requested format"), and the page stays on the login form."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    rule = page.inner_text("#name-rule")
    assert "1-32 letters, digits" in rule, rule
    for bad in ("ann smith", "ann!", "<b>"):  # (maxlength=32 keeps longer names out)
        page.fill("#name", bad)
        page.click("#login button")
        page.wait_for_selector("#login-error:not(:empty)")
        message = page.inner_text("#login-error")
        assert message == f"A name is {rule}.", message
        assert page.is_visible("#login") and page.is_hidden("#app")
        assert page.eval_on_selector("#name", "el => el.validationMessage") == ""
    page.fill("#name", "józef.k")  # letters of any script, like the server's rule
    assert page.inner_text("#login-error") == ""  # typing clears the message
    page.click("#login button")
    page.wait_for_selector('#state[data-state="open"]')
    assert page.inner_text("#me") == "józef.k"
    assert errors == []


def core_install(context: BrowserContext, url: str) -> None:
    """A server without the `auth` extra: no dev tokens, so the page connects with ?user=;
    it says what is off and how to turn it on."""
    ann = Page(context, url, "ann")
    bob = Page(context, url, "bob")
    off = ann.page.inner_text("#off-list")
    assert "pip install 'trio_rt[auth]'" in off and "pip install 'trio_rt[cassandra]'" in off
    for p in (ann, bob):
        p.open_room("chat:general")
    ann.say("no tokens here")
    bob.wait_message("no tokens here", user="ann")
    assert ann.errors == [] and bob.errors == []


def recover(context: BrowserContext, url: str) -> None:
    """Same server, Bob's connection drops: he comes back with `since` and the server replays
    what he missed (recovered: true), in order, each once."""
    ann = Page(context, url, "ann")
    bob = Page(context, url, "bob")
    for p in (ann, bob):
        p.open_room("chat:general")
    ann.say("first")
    bob.wait_message("first")
    # Bob cannot reconnect until Ann has written: his page gets no token meanwhile.
    bob.page.route("**/token*", lambda route: route.abort())
    ask("drop bob")  # the server closes Bob's connection (1011: reconnect)
    bob.wait_not_open()
    ann.say("missed one")
    ann.say("missed two")
    ann.wait_message("missed two")
    bob.page.unroute("**/token*")
    bob.wait_state("open")
    bob.wait_message("missed two", user="ann")
    assert bob.messages() == ["first", "missed one", "missed two"]
    assert bob.page.inner_text("#notice") == ""  # no recovery_failed: replayed
    assert ann.errors == [] and bob.errors == []


def posts(context: BrowserContext, url: str) -> None:
    """The posts board: one page posts, the other sees it arrive by change notification."""
    ann = Page(context, url, "ann")
    bob = Page(context, url, "bob")
    for p in (ann, bob):
        p.page.wait_for_selector("#posts:not([hidden])")
    ann.page.fill("#post-title", "first <i>post</i>")
    ann.page.press("#post-title", "Enter")
    for p in (bob, ann):
        item = p.page.locator("#post-list li", has_text="first <i>post</i>").first
        item.wait_for()
        # The title and its author, nothing else (no raw "insert: ..." prefix).
        assert item.locator(".post-title").inner_text() == "first <i>post</i>"
        assert item.locator(".post-author").inner_text() == "by ann"
        assert "insert" not in item.inner_text()
    assert bob.page.locator("#post-list i").count() == 0  # text, never HTML
    # The button sits beside its input, on one line.
    box = bob.page.eval_on_selector(
        "#poster",
        """form => {
          const b = form.querySelector("button").getBoundingClientRect();
          const i = form.querySelector("input").getBoundingClientRect();
          const cs = getComputedStyle(form.querySelector("button"));
          const line = parseFloat(cs.lineHeight) || parseFloat(cs.fontSize) * 1.3;
          return {bTop: b.top, iBottom: i.bottom, bLeft: b.left, iRight: i.right,
                  lines: b.height / line};
        }""",
    )
    assert box["bLeft"] >= box["iRight"] and box["bTop"] < box["iBottom"], box
    assert box["lines"] < 2, box
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "demo-posts.png"
    bob.page.screenshot(path=str(shot))
    print(f"posts screenshot: {shot}", flush=True)
    assert ann.errors == [] and bob.errors == []


SCENARIOS: dict[str, Callable[[BrowserContext, str], Any]] = {
    "posts": posts,
    "two_pages_chat": two_pages_chat,
    "restart": restart,
    "restart_order": restart_order,
    "login_rules": login_rules,
    "core_install": core_install,
    "recover": recover,
}


def main() -> None:
    name, url, workdir = sys.argv[1:4]
    with browser(Path(workdir)) as context:
        SCENARIOS[name](context, url)
    print("@@ passed", flush=True)


if __name__ == "__main__":
    main()

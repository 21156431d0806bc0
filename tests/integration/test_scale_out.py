"""Scale-out: three server processes on loopback sharing one real Redis.

Clients spread over the three servers in one room receive every broadcast exactly once,
whichever server published it; when one server is stopped (SIGTERM: graceful shutdown, close
code 1001) its clients reconnect to the others (the client's multi-URL round-robin), rejoin the
room by themselves, and every later broadcast again reaches every client exactly once.

The servers are ``python -m trio_rt serve tests.integration.scale_out_server:build_app``
subprocesses. No assertion depends on timing: ``fail_after`` only guards against deadlocks.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from tests.integration.scale_out_server import REDIS_URL_ENV
from trio_rt.client import ClientClosed, ClientEvent, ClientState, WebSocketClient

REPO_ROOT = Path(__file__).resolve().parents[2]
ROOM = "scale-out"
SERVERS = 3
CLIENTS = 30
PER_SERVER = 10  # broadcasts published through each server, per phase
GUARD = 60.0  # seconds: deadlock protection only (a 2-core machine starting 3 interpreters)
LISTENING = re.compile(rb"trio_rt listening on ws://([^:/]+):(\d+)/")


@dataclass
class ServerProcess:
    proc: trio.Process
    url: str = ""
    stdout: bytearray = field(default_factory=bytearray)

    async def read_url(self) -> None:
        """Read stdout until the CLI's ``listening`` line; remember the URL."""
        assert self.proc.stdout is not None
        with trio.fail_after(GUARD):
            while (match := LISTENING.search(self.stdout)) is None:
                chunk = await self.proc.stdout.receive_some()
                if not chunk:
                    raise RuntimeError(f"server exited before listening: {bytes(self.stdout)!r}")
                self.stdout += chunk
        self.url = f"ws://{match[1].decode()}:{int(match[2])}/"

    async def drain(self) -> None:
        """Keep reading stdout so the server never blocks on a full pipe."""
        assert self.proc.stdout is not None
        with contextlib.suppress(trio.ClosedResourceError):
            while chunk := await self.proc.stdout.receive_some():
                self.stdout += chunk

    async def terminate(self) -> int:
        """SIGTERM (graceful shutdown) and wait for the exit; its return code."""
        self.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(GUARD):
            return await self.proc.wait()


@contextlib.asynccontextmanager
async def serve_apps(
    app: str, envs: Sequence[Mapping[str, str]]
) -> AsyncIterator[list[ServerProcess]]:
    """Start one ``trio-rt serve <app>`` per entry of `envs` (variables added to this
    process's environment); on the way out, stop whatever still runs (SIGTERM, then SIGKILL
    if it hangs) and close the pipes."""
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "trio_rt", "--log-level", "WARNING", "serve"]
    argv += [app, "--host", "127.0.0.1", "--port", "0"]
    servers: list[ServerProcess] = []
    try:
        async with trio.open_nursery() as nursery:
            for extra in envs:
                env = {**os.environ, **extra, "PYTHONPATH": pythonpath}
                proc = await trio.lowlevel.open_process(
                    argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE
                )
                servers.append(ServerProcess(proc))
            for server in servers:
                await server.read_url()
                nursery.start_soon(server.drain)
            try:
                yield servers
            finally:
                with trio.CancelScope(shield=True):
                    for server in servers:
                        if server.proc.returncode is None:
                            server.proc.send_signal(signal.SIGTERM)
                    with trio.move_on_after(GUARD):
                        for server in servers:
                            await server.proc.wait()
    finally:
        with trio.CancelScope(shield=True):
            for server in servers:
                if server.proc.returncode is None:
                    server.proc.kill()
                await server.proc.wait()
                assert server.proc.stdout is not None
                await server.proc.stdout.aclose()


def server_processes(
    redis_url: str, count: int
) -> contextlib.AbstractAsyncContextManager[list[ServerProcess]]:
    """``count`` scale-out servers sharing ``redis_url`` (`serve_apps`)."""
    app = "tests.integration.scale_out_server:build_app"
    return serve_apps(app, [{REDIS_URL_ENV: redis_url}] * count)


@dataclass
class Member:
    """One client in the room, and what it received."""

    index: int
    client: WebSocketClient
    counts: collections.Counter[int] = field(default_factory=collections.Counter)
    origins: dict[int, set[str]] = field(default_factory=lambda: collections.defaultdict(set))
    close_codes: list[int | None] = field(default_factory=list)

    @property
    def server_id(self) -> str:
        welcome = self.client.welcome
        assert welcome is not None
        server_id = welcome["server_id"]
        assert isinstance(server_id, str)
        return server_id

    async def receive(self) -> None:
        with contextlib.suppress(ClientClosed):
            async for message in self.client:
                if message["type"] == "m":
                    n = message["n"]
                    self.counts[n] += 1
                    self.origins[n].add(message["origin"])

    def disconnected(self, event: ClientEvent) -> None:
        self.close_codes.append(event.close_code)


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll until ``predicate()``; a deadlock guard, not a timing assertion."""
    with trio.fail_after(GUARD):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.02)


async def publish_through(
    members: list[Member], server_id: str, numbers: range
) -> tuple[Member, str]:
    """Have a member connected to ``server_id`` send ``publish`` for each of ``numbers``."""
    publisher = next(
        m for m in members if m.client.state is ClientState.CONNECTED and m.server_id == server_id
    )
    for n in numbers:
        await publisher.client.send({"type": "publish", "room": ROOM, "n": n})
    return publisher, server_id


async def broadcast_round(members: list[Member], server_ids: list[str], first: int) -> int:
    """Publish PER_SERVER broadcasts through each server, then a fence per server; wait until
    every member has them all; check each arrived exactly once with the right origin. Returns
    the next unused number.

    A duplicate of a broadcast would travel the same path as the fence published after it
    through the same server (local delivery, or that server's Redis connection, both in order),
    so once every fence arrived, the counts are final for this round.
    """
    expected: dict[int, str] = {}
    n = first
    for server_id in server_ids:
        numbers = range(n, n + PER_SERVER)
        await publish_through(members, server_id, numbers)
        expected.update(dict.fromkeys(numbers, server_id))
        n += PER_SERVER
    for server_id in server_ids:  # fences
        await publish_through(members, server_id, range(n, n + 1))
        expected[n] = server_id
        n += 1
    await wait_until(lambda: all(set(expected) <= set(m.counts) for m in members))
    for member in members:
        got = {k: member.counts[k] for k in expected}
        assert got == dict.fromkeys(expected, 1), f"client {member.index}: {got}"
        origins = {k: member.origins[k] for k in expected}
        assert origins == {k: {v} for k, v in expected.items()}, f"client {member.index}"
    return n


async def test_three_servers_share_a_room_and_survive_one_stopping(redis_url: str) -> None:
    async with server_processes(redis_url, SERVERS) as servers:
        urls = [s.url for s in servers]
        async with trio.open_nursery() as receivers, contextlib.AsyncExitStack() as stack:
            members: list[Member] = []
            for i in range(CLIENTS):
                client = WebSocketClient(
                    urls,
                    url_index=i % SERVERS,  # round-robin over the servers
                    initial_delay=0.05,
                    max_delay=0.5,
                    ping_interval=None,
                    compression=False,
                )
                member = Member(i, client)
                client.add_listener("disconnected", member.disconnected)
                members.append(member)
                await stack.enter_async_context(client)
                receivers.start_soon(member.receive)
            with trio.fail_after(GUARD):
                for member in members:
                    await member.client.join_room(ROOM)
                    # join_room() can return before CONNECTED (the join was sent during the
                    # connection's restore step): wait for the welcome to be published too.
                    await member.client.wait_connected()

            # Each server holds a third of the clients.
            server_ids = [members[s].server_id for s in range(SERVERS)]
            assert len(set(server_ids)) == SERVERS
            for member in members:
                assert member.client.url == urls[member.index % SERVERS]
                assert member.server_id == server_ids[member.index % SERVERS]

            # Phase 1: broadcasts published through each of the three servers.
            n = await broadcast_round(members, server_ids, 0)

            # Phase 2: stop server 0 gracefully; its clients move to the other two.
            assert await servers[0].terminate() == 0
            stopped = server_ids[0]
            moved = [m for m in members if m.index % SERVERS == 0]
            stayed = [m for m in members if m.index % SERVERS != 0]
            await wait_until(
                lambda: all(
                    m.client.state is ClientState.CONNECTED and m.server_id != stopped
                    for m in members
                )
            )
            for member in moved:
                assert member.close_codes == [1001], member.close_codes
                assert member.client.rooms == {ROOM}
            for member in stayed:
                assert member.close_codes == []
                assert member.client.stats.connections == 1
            assert {m.server_id for m in moved} <= set(server_ids[1:])

            n = await broadcast_round(members, server_ids[1:], n)

            # Nothing from phase 1 arrived twice later on.
            for member in members:
                assert set(member.counts.values()) == {1}, f"client {member.index}"
                assert len(member.counts) == n

            await stack.aclose()  # graceful client closes end the receivers

        for server in servers[1:]:
            assert await server.terminate() == 0

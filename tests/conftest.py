"""Shared fixtures: a real server on a loopback port, raw WebSocket clients, task accounting."""

from __future__ import annotations

import json
import resource
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import pytest
import trio
from hypothesis import settings
from websockets.trio.client import ClientConnection, connect

from trio_rt import WebSocketManager
from trio_rt.testing.services import CassandraEndpoint, redis_ping

if TYPE_CHECKING:
    from trio_rt.cassandra import CassandraSession

# Real Redis and Cassandra for the tests that ask for them (started once per run when the
# TRIO_RT_* environment variables do not point at running servers).
pytest_plugins = ["trio_rt.testing.pytest_plugin"]

# Tests never depend on timing: no Hypothesis deadline (its default, 200 ms per example,
# fails a property test that a busy CI machine stalls; tests set max_examples themselves).
settings.register_profile("trio_rt", deadline=None)
settings.load_profile("trio_rt")

# Many tests open hundreds of sockets: raise the soft file limit as far as the hard one allows.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _hard == resource.RLIM_INFINITY or _soft < _hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(_hard, 65536), _hard))


@pytest.fixture
def make_manager() -> Callable[..., WebSocketManager]:
    def make(**options: Any) -> WebSocketManager:
        options.setdefault("host", "127.0.0.1")
        options.setdefault("port", 0)
        options.setdefault("heartbeat_interval", None)
        return WebSocketManager(**options)

    return make


class Client:
    """A thin JSON client over websockets, for protocol-level tests (not trio_rt's client)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] | None = None

    async def send(self, data: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(json.dumps(data) if isinstance(data, dict) else data)

    async def recv(self, limit: float = 5.0) -> dict[str, Any]:
        with trio.fail_after(limit):
            msg = await self.ws.recv()
        data = json.loads(msg)
        assert isinstance(data, dict)
        return data

    async def request(self, data: dict[str, Any], limit: float = 5.0) -> dict[str, Any]:
        await self.send(data)
        return await self.recv(limit)


@asynccontextmanager
async def client(
    manager: WebSocketManager, path: str = "/", **kwargs: Any
) -> AsyncIterator[Client]:
    """Connect to `manager`, consume the welcome, and close cleanly at the end."""
    kwargs.setdefault("ping_interval", None)
    async with connect(manager.url.rstrip("/") + path, **kwargs) as ws:
        c = Client(ws)
        c.welcome = await c.recv()
        assert c.welcome["type"] == "welcome"
        yield c


@asynccontextmanager
async def two_servers(
    m1: WebSocketManager, m2: WebSocketManager
) -> AsyncIterator[tuple[Client, Client]]:
    """Serve two managers in one process, with one client on each."""
    async with m1, m2, client(m1) as a, client(m2) as b:
        yield a, b


def count_tasks() -> int:
    """All tasks of this trio run, found by walking the task tree from the root."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    total = 0
    stack = [root]
    while stack:
        task = stack.pop()
        total += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return total


async def wait_until(
    predicate: Callable[[], bool],
    limit: float = 10.0,
    explain: Callable[[], str] | None = None,
) -> None:
    """Poll `predicate` until true; fail after `limit` s (a deadlock guard, not a timing test):
    with `explain`, a test failure with what it returns (the state worth seeing), else
    `trio.TooSlowError`.

    Polling is deliberate: tests observe server state that has no event to wait on.
    """
    with trio.move_on_after(limit):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)
        return
    if explain is None:
        raise trio.TooSlowError
    pytest.fail(f"not so after {limit:g} s: {explain()}")


@contextmanager
def redis_on(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A redis-server on a fixed port (so a restart comes back at the same address)."""
    workdir = tempfile.mkdtemp(prefix="trio-rt-redis-restart-")
    proc = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(500):
            if redis_ping("127.0.0.1", port):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server on {port} exited with {proc.returncode}")
            time.sleep(0.01)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def free_port() -> int:

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- Cassandra: a session on the test node, and a keyspace of one's own per test ----------------
@pytest.fixture
async def session(cassandra_endpoint: CassandraEndpoint) -> AsyncIterator[CassandraSession]:
    from trio_rt.cassandra import CassandraSession

    async with CassandraSession.connect(
        [cassandra_endpoint.host], port=cassandra_endpoint.port
    ) as s:
        yield s


@pytest.fixture
async def keyspace(session: CassandraSession) -> AsyncIterator[str]:
    name = "trt_" + uuid.uuid4().hex[:12]
    await session.create_keyspace(name)
    yield name
    await session.drop_keyspace(name)

"""The fault-injection harness: processes, faults, clients, settling, the record.

- Services the suite owns (never the shared ones): `RedisNode` (a redis-server on a fixed port,
  killed, restarted empty, or shut down with its data and restarted), `CassandraNode` (the
  suite's Cassandra, paused with SIGSTOP), `AppServer` (``python -m trio_rt serve
  tests.faults.app:...`` on a fixed port, so a restarted server is back at the same URL),
  `Writer` processes (``python -m tests.faults.app write``), `TcpProxy` (cut on demand).
- Clients (`Receiver`, `Sender`, `Subscriber`) are `WebSocketClient`s in the test process, each
  an `Actor` in its own cancel scope: a client that hangs can be cancelled and reported
  instead of blocking the run (`Watchdog`).
- `settle` waits until every client has everything that was acknowledged, or until nothing
  changes for a while with every client connected, under a deadlock guard.
- `Record` aggregates `ledger.compare` per client and stream, prints one line, writes JSON
  under ``test-artifacts/faults/``.

The client options are in `make_client`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from trio_rt.client import ClientClosed, ClientEvent, ClientState, WebSocketClient
from trio_rt.testing.services import redis_command, redis_ping

from .app import Config
from .ledger import Counts, Delivery, FrameCounter, Journaled, StreamReport

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "faults"
LISTENING = re.compile(rb"trio_rt listening on ws://[^:/]+:(\d+)/")
# Every scenario's line of this session, for the terminal summary (conftest.py).
RESULTS: list[str] = []
POLL = 0.05  # seconds between polls of things that have no event (files, processes, counters)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when pytest dies (even kill -9), no orphans."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(argv: Sequence[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a child on this (main) thread, stdout and stderr appended to `log`.

    Not trio's open_process: it forks from a worker thread, and PR_SET_PDEATHSIG fires when
    that thread exits."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            **kwargs,
        )


async def wait_exit(proc: subprocess.Popen[bytes], guard: float) -> int:
    """The child's exit code; SIGKILL after `guard` seconds (a deadlock guard)."""
    with trio.move_on_after(guard):
        while proc.poll() is None:  # noqa: ASYNC110 - no event for another process's exit
            await trio.sleep(POLL)
    if proc.poll() is None:
        proc.kill()
        while proc.poll() is None:  # noqa: ASYNC110
            await trio.sleep(POLL)
    assert proc.returncode is not None
    return proc.returncode


async def wait_until(predicate: Callable[[], bool], guard: float, what: str) -> None:
    """Poll `predicate`; fail with `what` after `guard` seconds (deadlock guard only)."""
    with trio.move_on_after(guard):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(POLL)
        return
    raise AssertionError(f"not within {guard:.0f} s: {what}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Timeline:
    """What happened when (seconds since the scenario started), for the record."""

    def __init__(self) -> None:
        self.start = trio.current_time()
        self.events: list[tuple[float, str]] = []

    def now(self) -> float:
        return round(trio.current_time() - self.start, 2)

    def note(self, what: str) -> None:
        self.events.append((self.now(), what))
        print(f"  [{self.now():6.2f}] {what}", flush=True)


# -- services -------------------------------------------------------------------------------------
class RedisNode:
    """A redis-server the suite owns, always on the same port. No automatic saving; a
    `shutdown_save` writes its data so the next `start` loads it again."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _spawn(self, *, empty: bool) -> None:
        if empty:
            with contextlib.suppress(FileNotFoundError):
                (self.dir / "dump.rdb").unlink()
        self.starts += 1
        argv = [shutil.which("redis-server") or "redis-server", "--port", str(self.port)]
        argv += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.dir), "--dbfilename", "dump.rdb"]
        self.proc = spawn(argv, self.dir / f"redis.{self.starts}.log", cwd=self.dir)

    async def start(self, *, empty: bool = True) -> None:
        self._spawn(empty=empty)
        proc = self.proc
        assert proc is not None
        await wait_until(
            lambda: proc.poll() is not None or redis_ping("127.0.0.1", self.port, 0.2),
            30,
            f"redis-server on {self.port} answering PING",
        )
        if proc.poll() is not None:
            raise RuntimeError(
                f"redis-server exited: {tail(self.dir / f'redis.{self.starts}.log')}"
            )

    async def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await wait_exit(self.proc, 10)

    async def shutdown_save(self) -> None:
        """SHUTDOWN SAVE: the data goes to disk, the process exits (clients see it go)."""
        assert self.proc is not None
        with contextlib.suppress(OSError, Exception):
            redis_command("127.0.0.1", self.port, "SHUTDOWN", "SAVE")
        await wait_exit(self.proc, 20)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            await wait_exit(self.proc, 10)


@dataclass
class CassandraNode:
    """The suite's own Cassandra node (never the shared one): only paused and resumed."""

    host: str
    port: int
    pid: int

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


class AppServer:
    """``python -m trio_rt serve tests.faults.app:<factory>`` on a fixed port; each run logs
    to its own file in the scenario's directory."""

    def __init__(
        self, name: str, factory: str, config: Config, logdir: Path, *, workers: int = 1
    ) -> None:
        self.name = name
        self.factory = factory
        self.config = config
        self.logdir = logdir
        self.workers = workers  # > 1: ``serve --workers N``, a supervisor and N workers
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def log(self) -> Path:
        return self.logdir / f"{self.name}.{self.runs}.log"

    def _spawn(self) -> None:
        self.runs += 1
        env = {**os.environ, **self.config.environ(), "FAULTS_SERVER_NAME": self.name}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "trio_rt", "--log-level", "WARNING", "serve"]
        argv += [
            f"tests.faults.app:{self.factory}",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if self.workers > 1:
            argv += ["--workers", str(self.workers)]
        self.proc = spawn(argv, self.log, cwd=REPO_ROOT, env=env)

    def worker_pids(self) -> dict[int, int]:
        """With ``workers > 1``: worker number -> pid of the supervisor's live workers (read
        from /proc: each worker's parent and its ``TRIO_RT_WORKER_ID``)."""
        assert self.proc is not None
        out: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                fields = stat.rsplit(")", 1)[1].split()
                if int(fields[1]) != self.proc.pid or fields[0] == "Z":
                    continue
                environ = (entry / "environ").read_bytes().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
            for item in environ:
                if item.startswith(b"TRIO_RT_WORKER_ID="):
                    out[int(item.split(b"=", 1)[1])] = int(entry.name)
        return out

    async def start(self, guard: float = 60) -> None:
        """Start and wait for the CLI's ``listening`` line."""
        self._spawn()
        proc, log = self.proc, self.log
        assert proc is not None

        def up() -> bool:
            return proc.poll() is not None or LISTENING.search(log.read_bytes()) is not None

        await wait_until(up, guard, f"{self.name} listening")
        if proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({proc.returncode}):\n{tail(log)}")

    async def kill9(self) -> None:
        """SIGKILL, and reap it."""
        assert self.proc is not None
        self.proc.kill()
        await wait_exit(self.proc, 10)

    async def terminate(self, guard: float = 30) -> int:
        """SIGTERM (graceful shutdown); the exit code (SIGKILL after `guard`)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await wait_exit(self.proc, guard)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            await self.terminate()

    async def stats(self) -> dict[str, Any]:
        """The running server's counters (``GET /faults/stats``), or why not."""
        url = f"http://127.0.0.1:{self.port}/faults/stats"

        def get() -> dict[str, Any]:
            with urllib.request.urlopen(url, timeout=10) as response:
                return dict(json.load(response))

        try:
            return await trio.to_thread.run_sync(get)
        except (OSError, ValueError) as exc:
            return {"error": repr(exc)}


class Writer:
    """A writer process (``python -m tests.faults.app write``) and its ack file."""

    def __init__(self, index: int, config: Config, logdir: Path, count: int, rate: float):
        self.index = index
        self.config = config
        self.log = logdir / f"writer-{index}.log"
        self.acks = logdir / f"writer-{index}.acks"
        self.count = count
        self.rate = rate
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        env = {**os.environ, **self.config.environ(), "FAULTS_SERVER_NAME": f"w{self.index}"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "tests.faults.app", "write", "--writer", str(self.index)]
        argv += ["--count", str(self.count), "--rate", str(self.rate), "--acks", str(self.acks)]
        self.proc = spawn(argv, self.log, cwd=REPO_ROOT, env=env, stdin=subprocess.PIPE)

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"writer {self.index} exited:\n{tail(self.log)}")
        return b"ready" in self.log.read_bytes()

    def go(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def outcomes(self) -> tuple[list[str], list[str]]:
        """(acknowledged ids, refused ids) so far."""
        acked: list[str] = []
        refused: list[str] = []
        if self.acks.exists():
            for line in self.acks.read_text().splitlines():
                kind, _, rest = line.partition(" ")
                (acked if kind == "A" else refused).append(rest.split(" ")[0])
        return acked, refused

    async def stop(self) -> None:
        if self.proc is not None:
            if self.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()
            if self.proc.poll() is None:
                self.proc.terminate()
            await wait_exit(self.proc, 10)


class TcpProxy:
    """A TCP proxy in front of one server; `cut()` resets every connection through it (RST on
    both sides, as a dropped network path). Counts the frames sent to each client."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.links: list[_Link] = []

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started()

    async def _handle(self, downstream: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await trio.aclose_forcefully(downstream)
            return
        link = _Link(downstream, upstream)
        self.links.append(link)
        try:
            async with trio.open_nursery() as nursery:
                link.scope = nursery.cancel_scope
                nursery.start_soon(_pump, downstream, upstream, None, link.scope)
                nursery.start_soon(_pump, upstream, downstream, link.frames, link.scope)
        finally:
            link.open = False
            for stream in (downstream, upstream):
                if link.cut:  # RST instead of FIN: the peers get no orderly close
                    with contextlib.suppress(OSError):
                        stream.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                await trio.aclose_forcefully(stream)

    def cut(self) -> int:
        """Reset every open connection; how many."""
        n = 0
        for link in self.links:
            if link.open and link.scope is not None:
                link.cut = True
                link.scope.cancel()
                n += 1
        return n

    def open_links(self) -> list[_Link]:
        return [link for link in self.links if link.open]


@dataclass(eq=False)
class _Link:
    downstream: trio.SocketStream
    upstream: trio.SocketStream
    frames: FrameCounter = field(default_factory=FrameCounter)
    scope: trio.CancelScope | None = None
    open: bool = True
    cut: bool = False


async def _pump(
    source: trio.SocketStream,
    sink: trio.SocketStream,
    counter: FrameCounter | None,
    link_scope: trio.CancelScope,
) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while data := await source.receive_some(65536):
            await sink.send_all(data)
            if counter is not None:
                counter.feed(data)
    link_scope.cancel()  # one side is gone: so is the link


# -- clients --------------------------------------------------------------------------------------
def make_client(urls: Sequence[str], index: int, **options: Any) -> WebSocketClient:
    """A reconnecting client as an app would configure it for fast failover: keepalive every
    5 s, reconnect after 0.1 s growing to 2 s, round-robin over every server."""
    options.setdefault("url_index", index % len(urls))
    options.setdefault("initial_delay", 0.1)
    options.setdefault("max_delay", 2.0)
    options.setdefault("ping_interval", 5.0)
    options.setdefault("ping_timeout", 5.0)
    options.setdefault("compression", False)  # 2 cores: spare the (de)compression
    options.setdefault("close_timeout", 5.0)
    options.setdefault("proxy", None)
    options.setdefault("rng", random.Random(index))
    return WebSocketClient(list(urls), **options)


async def subscribe_live(client: WebSocketClient, table: str, filters: Mapping[str, Any]) -> str:
    """Subscribe; returns the key once the subscription is live on the server (its replay,
    if any, done)."""
    return await client.subscribe(table, dict(filters))


class Actor:
    """One client, its task, what it saw. `run` enters the client, lets `setup` join or
    subscribe, then reads until `stop` is set; `scope` lets the harness cancel a client that
    hangs (the run is then marked `cancelled`)."""

    def __init__(self, name: str, client: WebSocketClient) -> None:
        self.name = name
        self.client = client
        self.scope = trio.CancelScope()
        self.ready = trio.Event()
        self.finished = trio.Event()
        self.stop = trio.Event()
        self.cancelled = False
        self.events: Counter[str] = Counter()
        self.recovery_failed: list[str] = []
        self.closed_error: str | None = None
        self.messages = 0
        self._resume: trio.Event | None = None  # set while the app is not reading
        for kind in ("connected", "disconnected", "recovery_failed", "rejoin_failed", "closed"):
            client.add_listener(kind, self._on_event)  # type: ignore[arg-type]

    def _on_event(self, event: ClientEvent) -> None:
        self.events[event.type] += 1
        if event.type == "recovery_failed":
            self.recovery_failed.append(f"{event.room}:{event.reason}")

    async def setup(self) -> None:
        await trio.lowlevel.checkpoint()

    def on_message(self, message: dict[str, Any]) -> None:
        pass

    def pause(self) -> None:
        """Stop reading (the app is busy): the client's buffer fills, then its socket."""
        if self._resume is None:
            self._resume = trio.Event()

    def resume(self) -> None:
        if self._resume is not None:
            self._resume.set()
            self._resume = None

    async def _read(self) -> None:
        try:
            while True:
                if self._resume is not None:
                    await self._resume.wait()
                message = await self.client.receive()
                self.messages += 1
                self.on_message(message)
        except ClientClosed as exc:
            if exc.error is not None:
                self.closed_error = repr(exc.error)

    async def run(self) -> None:
        try:
            with self.scope:
                async with self.client, trio.open_nursery() as nursery:
                    nursery.start_soon(self._read)
                    await self.setup()
                    await self.client.wait_connected()
                    self.ready.set()
                    await self.stop.wait()
                    nursery.cancel_scope.cancel()
            if self.scope.cancelled_caught:
                self.cancelled = True
        finally:
            self.finished.set()

    def cancel(self) -> None:
        self.cancelled = True
        self.scope.cancel()

    @property
    def connected(self) -> bool:
        return self.client.state is ClientState.CONNECTED


class Receiver(Actor):
    """A member of `rooms` from start to end; records every room message (``m``) and the
    entries of ``history`` pages (the client's refetch after ``recovered: false``)."""

    def __init__(self, name: str, client: WebSocketClient, rooms: Sequence[str]) -> None:
        super().__init__(name, client)
        self.rooms = list(rooms)
        self.got: dict[str, list[Delivery]] = {room: [] for room in rooms}
        self.ids: dict[str, set[str]] = {room: set() for room in rooms}
        self.errors = 0

    async def setup(self) -> None:
        for room in self.rooms:
            await self.client.join_room(room)

    def _record(self, message: Mapping[str, Any], live: bool) -> None:
        room, position = message.get("room"), message.get("position")
        if message.get("type") == "m" and room in self.got and isinstance(position, dict):
            mid = str(message["msg"])
            self.got[room].append(
                Delivery(mid, int(position["offset"]), str(position["epoch"]), live)
            )
            self.ids[room].add(mid)

    def on_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "m":
            self._record(message, True)
        elif kind == "history":
            for entry in message.get("messages", []):
                if isinstance(entry, dict):
                    self._record(entry, False)
        elif kind == "error":
            self.errors += 1

    def deliveries(self) -> int:
        return sum(len(v) for v in self.got.values())


class Sender(Actor):
    """Sends ``say`` messages at `rate` per second to `room`; tracks each id's answer."""

    def __init__(self, name: str, client: WebSocketClient, room: str) -> None:
        super().__init__(name, client)
        self.room = room
        self.sent: list[str] = []
        self.acked: dict[str, dict[str, Any]] = {}
        self.refused: dict[str, str] = {}
        self.next = 0

    def on_message(self, message: dict[str, Any]) -> None:
        mid = message.get("id")
        if message["type"] == "said" and isinstance(mid, str):
            self.acked[mid] = message.get("position") or {}
        elif message["type"] == "error" and isinstance(mid, str) and mid in self.sent:
            self.refused[mid] = str(message.get("code"))

    async def say(self) -> None:
        mid = f"{self.name}-{self.next:05d}"
        self.next += 1
        self.sent.append(mid)
        await self.client.send({"type": "say", "room": self.room, "id": mid})

    async def traffic(self, count: int, rate: float) -> None:
        """`count` messages, paced from the start (a sender held up catches up)."""
        start = trio.current_time()
        for n in range(count):
            await self.say()
            await trio.sleep_until(start + (n + 1) / rate)

    async def burst(self, count: int) -> None:
        """`count` messages back to back (a flood)."""
        for _ in range(count):
            await self.say()

    def answered(self) -> int:
        return len(self.acked) + len(self.refused)


class Subscriber(Actor):
    """One filtered table subscription; records every ``data_update``."""

    def __init__(
        self,
        name: str,
        client: WebSocketClient,
        table: str,
        filters: Mapping[str, Any],
    ) -> None:
        super().__init__(name, client)
        self.table = table
        self.filters = dict(filters)
        self.got: list[Delivery] = []
        self.ids: set[str] = set()
        self.errors = 0

    async def setup(self) -> None:
        await subscribe_live(self.client, self.table, self.filters)

    def on_message(self, message: dict[str, Any]) -> None:
        if message["type"] == "data_update":
            event = message["event"]
            position = event["position"]
            mid = str(event["data"]["id"])
            self.got.append(Delivery(mid, position["offset"], position["epoch"]))
            self.ids.add(mid)
        elif message["type"] == "error":
            self.errors += 1


def _holds(value: Any, op: str, operand: Any) -> bool:
    if op == "eq":
        return bool(value == operand)
    if op == "in":
        return value in operand
    if value is None:
        return False
    return bool(
        {
            "gt": value > operand,
            "gte": value >= operand,
            "lt": value < operand,
            "lte": value <= operand,
        }[op]
    )


def matches(filters: Mapping[str, Any], row: Mapping[str, Any]) -> bool:
    """The harness's own reading of a subscription filter (eq, in, gt, gte, lt, lte; ANDed),
    independent of the server's."""
    for column, condition in filters.items():
        clauses = condition if isinstance(condition, dict) else {"eq": condition}
        if not all(_holds(row.get(column), op, operand) for op, operand in clauses.items()):
            return False
    return True


def read_watch_log(path: Path) -> list[list[Journaled]]:
    """A named watcher's journal (app.build_changes), one list per life of its process (each
    begins with a ``life`` line); a torn line (a kill in the middle of a write) is ignored."""
    lives: list[list[Journaled]] = []
    if not path.exists():
        return lives
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if "life" in entry:
            lives.append([])
            continue
        position, saved = entry["position"], entry["saved"]
        delivery = Delivery(str(entry["id"]), position["offset"], position["epoch"])
        stored = None if saved is None else (int(saved["offset"]), str(saved["epoch"]))
        lives[-1].append(Journaled(delivery, stored))
    return lives


# -- running actors, watching for hangs, settling -------------------------------------------------
@contextlib.asynccontextmanager
async def running(actors: Sequence[Actor], guard: float = 60) -> AsyncIterator[None]:
    """Run `actors` until the block ends; yields once each is connected and set up. On the
    way out: a graceful close of every client (bounded by `guard`), then whatever did not
    finish is cancelled and marked `cancelled` (its close hung)."""
    async with trio.open_nursery() as nursery:
        for actor in actors:
            nursery.start_soon(actor.run)
        try:
            await wait_until(
                lambda: all(a.ready.is_set() or a.finished.is_set() for a in actors),
                guard,
                "every client connected and set up: "
                + ", ".join(a.name for a in actors if not a.ready.is_set()),
            )
            broken = [a.name for a in actors if not a.ready.is_set()]
            if broken:
                raise AssertionError(f"clients ended during setup: {broken}")
            yield
        finally:
            for actor in actors:
                actor.stop.set()
            with trio.move_on_after(guard):
                for actor in actors:
                    await actor.finished.wait()
            for actor in actors:
                if not actor.finished.is_set():
                    actor.cancel()


class Watchdog:
    """After a fault that ends some clients' connections, each of them must reconnect within
    `limit` seconds. One that stays CONNECTED on the same connection is hung (issue 12: the
    client never notices its server died): it is cancelled, so the run goes on, and reported.
    """

    def __init__(self, timeline: Timeline, limit: float = 30.0) -> None:
        self.timeline = timeline
        self.limit = limit
        self.hung: list[str] = []

    async def expect_reconnect(self, actors: Iterable[Actor], why: str) -> None:
        watched = [(a, a.client.stats.connections) for a in actors if a.connected]

        def moved() -> bool:
            return all(
                a.finished.is_set() or a.client.stats.connections > n or not a.connected
                for a, n in watched
            )

        with trio.move_on_after(self.limit):
            while not moved():  # noqa: ASYNC110 - client state has no event to wait on
                await trio.sleep(POLL)
        for actor, n in watched:
            if (
                not actor.finished.is_set()
                and actor.connected
                and actor.client.stats.connections == n
            ):
                self.hung.append(actor.name)
                self.timeline.note(
                    f"HUNG: {actor.name} still CONNECTED {self.limit:.0f} s after {why}"
                )
                actor.cancel()


async def settle(
    complete: Callable[[], bool],
    progress: Callable[[], object],
    connected: Callable[[], bool],
    *,
    quiet: float,
    guard: float,
) -> str:
    """Wait for the end of a scenario: ``"complete"`` once every client has everything that
    was acknowledged; ``"quiet"`` once nothing changed for `quiet` seconds while every client
    is connected (what is missing then is lost); ``"guard"`` when neither came in time."""
    last = progress()
    since = trio.current_time()
    with trio.move_on_after(guard):
        while True:
            if complete():
                return "complete"
            await trio.sleep(POLL * 2)
            now = progress()
            if now != last or not connected():
                last, since = now, trio.current_time()
            elif trio.current_time() - since >= quiet:
                return "quiet"
    return "guard"


# -- the record -----------------------------------------------------------------------------------
@dataclass
class Record:
    """A scenario's outcome: totals, per-client evidence, the timeline; printed and saved."""

    suite: str
    scenario: str
    params: dict[str, Any]
    timeline: Timeline
    totals: Counts = field(default_factory=Counts)
    reports: list[StreamReport] = field(default_factory=list)
    acknowledged: int = 0
    refused: int = 0
    unanswered: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    hung: list[str] = field(default_factory=list)
    settled: str = ""

    def add(self, report: StreamReport) -> None:
        self.reports.append(report)
        self.totals += report.counts

    @property
    def passed(self) -> bool:
        return self.totals.clean and not self.hung and self.settled != "guard"

    def line(self) -> str:
        t = self.totals
        return (
            f"faults {self.suite}/{self.scenario}: acknowledged={self.acknowledged} "
            f"delivered={t.delivered}/{t.expected} lost={t.lost} duplicated={t.duplicated} "
            f"out_of_order={t.out_of_order} refused={self.refused} "
            f"unanswered={self.unanswered} refetched={t.refetched} hung={len(self.hung)} "
            f"settled={self.settled} ({self.timeline.now():.0f} s)"
        )

    def save(self) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.suite}-{self.scenario}.json"
        bad = [r for r in self.reports if not r.counts.clean]
        data = {
            "suite": self.suite,
            "scenario": self.scenario,
            "passed": self.passed,
            "summary": self.line(),
            "params": self.params,
            "acknowledged": self.acknowledged,
            "refused": self.refused,
            "unanswered": self.unanswered,
            "totals": self.totals.to_json(),
            "hung": self.hung,
            "settled": self.settled,
            "seconds": self.timeline.now(),
            "timeline": self.timeline.events,
            "streams_with_faults": len(bad),
            "streams": len(self.reports),
            "evidence": [r.to_json() for r in bad[:50]],
            **self.extra,
        }
        path.write_text(json.dumps(data, indent=1) + "\n")
        return path

    def finish(self) -> None:
        """Print the line, save the JSON, and fail unless nothing was lost, duplicated or out
        of order, and no client hung."""
        line = self.line()
        path = self.save()
        print(line, flush=True)
        RESULTS.append(line)
        problems = []
        if self.hung:
            problems.append(
                f"{len(self.hung)} client(s) hung (stayed CONNECTED to a dead connection and "
                f"were cancelled by the watchdog): {', '.join(self.hung)}"
            )
        if self.settled == "guard":
            problems.append("the run did not settle (clients not connected or still busy)")
        if not self.totals.clean:
            problems.append("acknowledged messages were lost, duplicated or out of order")
        sent = self.acknowledged + self.refused + self.unanswered
        if self.acknowledged < MIN_ACKNOWLEDGED_SHARE * max(sent, 1):
            # Nothing (or little) acknowledged proves nothing about delivery: a scenario
            # whose writers all timed out would otherwise pass with 0 of 0 delivered.
            problems.append(
                f"only {self.acknowledged} of {sent} sends were acknowledged (fewer than "
                f"{MIN_ACKNOWLEDGED_SHARE:.0%}): the run did not exercise delivery"
            )
        assert not problems, f"{line}\n" + "\n".join(problems) + f"\nrecord: {path}"


# A run must get at least this share of its sends acknowledged to say anything (Redis down
# 8 s gets ~60 %).
MIN_ACKNOWLEDGED_SHARE = 1 / 3


def dump_deliveries(
    workdir: Path,
    report: StreamReport,
    deliveries: Sequence[Delivery],
    acknowledged: Mapping[str, Any],
) -> None:
    """A faulty stream's deliveries, in arrival order, with the acknowledged position of each
    id: ``<workdir>/deliveries/<client>.<stream>.jsonl`` (for reading what went wrong)."""
    out = workdir / "deliveries"
    out.mkdir(exist_ok=True)
    name = f"{report.client}.{report.stream}".replace(":", "_")
    with open(out / f"{name}.jsonl", "w") as f:
        for d in deliveries:
            line = {"id": d.id, "offset": d.offset, "epoch": d.epoch, "live": d.live}
            line["acked"] = acknowledged.get(d.id)
            f.write(json.dumps(line) + "\n")
        f.write(json.dumps({"lost": report.lost_ids}) + "\n")


def log_summary(logs: Iterable[Path]) -> dict[str, int]:
    """Warnings, errors and tracebacks in the processes' logs (a clue, not a verdict)."""
    counts: Counter[str] = Counter()
    for log in logs:
        text = log.read_text(errors="replace") if log.exists() else ""
        counts["warning_lines"] += text.count(" WARNING ")
        counts["error_lines"] += text.count(" ERROR ")
        counts["tracebacks"] += text.count("Traceback (most recent call last)")
    return dict(counts)


# -- faults every scenario uses ---------------------------------------------------------------
class Deployment(Protocol):
    """What the server and Redis faults need of a scenario's deployment (`Rooms`, `Changes`)."""

    timeline: Timeline
    redis: RedisNode
    servers: list[AppServer]
    watchdog: Watchdog | None

    def on(self, server: AppServer) -> list[Actor]:
        """The clients connected to `server` now."""
        ...


def kill_server(index: int, down: float = 3.0) -> Callable[[Deployment], Awaitable[None]]:
    """``kill -9`` of a server (with its watcher, if its app runs one); restarted on the same
    port after `down` seconds."""

    async def fault(d: Deployment) -> None:
        server = d.servers[index]
        victims = d.on(server)
        await server.kill9()
        d.timeline.note(f"kill -9 {server.name} ({len(victims)} clients on it)")
        assert d.watchdog is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(d.watchdog.expect_reconnect, victims, f"kill -9 of {server.name}")
            await trio.sleep(down)  # part of the fault: the server stays down
            await server.start()
            d.timeline.note(f"{server.name} restarted")

    return fault


def terminate_server(index: int) -> Callable[[Deployment], Awaitable[None]]:
    """SIGTERM (graceful shutdown, 1001 to its clients); restarted once it exited."""

    async def fault(d: Deployment) -> None:
        server = d.servers[index]
        victims = d.on(server)
        assert d.watchdog is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(d.watchdog.expect_reconnect, victims, f"SIGTERM of {server.name}")
            d.timeline.note(f"SIGTERM {server.name} ({len(victims)} clients on it)")
            code = await server.terminate()
            d.timeline.note(f"{server.name} exited with {code}")
            await server.start()
            d.timeline.note(f"{server.name} restarted")

    return fault


async def redis_restart_empty(d: Deployment) -> None:
    """Redis ``kill -9``, restarted at once on the same port with no data (a sequencer's state
    is gone: it reseeds from the store's head, `reseed_gap` further on)."""
    await d.redis.kill9()
    d.timeline.note("redis killed")
    await d.redis.start(empty=True)
    d.timeline.note("redis back, empty")

"""``trio-rt serve --workers N``: the restart rules (sans-IO), the command line's errors, and the
supervisor with real worker processes on real Redis (``tests/integration/workers_app.py``).

What the real-process tests check: the kernel spreads clients over the workers; a broadcast
reaches every member once, whichever worker it is on; a worker killed with SIGKILL is logged and
restarted, and its clients reconnect; SIGTERM drains every worker (1001 to the clients, exit 0);
no worker outlives the supervisor, even when the supervisor is killed with SIGKILL. The
acknowledged-vs-received ledger under a worker kill is the fault suite's
(``tests/faults/test_rooms.py::test_worker_kill9``).
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import ClientConnection, connect

from trio_rt import WebSocketManager
from trio_rt._transport.reuseport import open_reuseport_listeners
from trio_rt._workers import (
    EX_CONFIG,
    GiveUp,
    Restart,
    RestartHistory,
    RestartPolicy,
    describe_exit,
    parse_workers,
    shareable_problem,
)
from trio_rt.client import ClientState, WebSocketClient

from ..conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration.workers_app"  # the apps' module
LISTENING = re.compile(rb"trio_rt listening on ws://([\d.]+):(\d+)/ .*(\d+) workers")
READY = re.compile(r"worker (\d+) ready \(pid (\d+), server_id (\S+), start (\d+)\)")


# -- the restart rules (sans-IO) ------------------------------------------------------------------
def test_backoff_doubles_up_to_the_cap_and_restarts_after_a_stable_run() -> None:
    history = RestartHistory(RestartPolicy(initial_delay=0.5, max_delay=3.0, stable_after=30))
    delays = [history.exited(returncode=-9, ready=True, uptime=1.0) for _ in range(5)]
    assert delays == [Restart(0.5), Restart(1.0), Restart(2.0), Restart(3.0), Restart(3.0)]
    # up for longer than stable_after: the count starts again
    assert history.exited(returncode=1, ready=True, uptime=31.0) == Restart(0.5)


def test_gives_up_after_max_start_failures_in_a_row() -> None:
    history = RestartHistory(RestartPolicy(max_start_failures=3))
    assert isinstance(history.exited(returncode=1, ready=False, uptime=0.1), Restart)
    assert isinstance(history.exited(returncode=1, ready=False, uptime=0.1), Restart)
    decision = history.exited(returncode=-11, ready=False, uptime=0.1)
    assert decision == GiveUp("it failed to start 3 times in a row (last: killed by SIGSEGV)")


def test_a_ready_worker_resets_the_start_failures() -> None:
    history = RestartHistory(RestartPolicy(max_start_failures=2))
    assert isinstance(history.exited(returncode=1, ready=False, uptime=0.1), Restart)
    assert isinstance(history.exited(returncode=1, ready=True, uptime=5.0), Restart)
    assert isinstance(history.exited(returncode=1, ready=False, uptime=0.1), Restart)
    assert isinstance(history.exited(returncode=1, ready=False, uptime=0.1), GiveUp)


def test_a_configuration_error_gives_up_at_once() -> None:
    decision = RestartHistory().exited(
        returncode=EX_CONFIG, ready=False, uptime=0.2, config_error=True
    )
    assert isinstance(decision, GiveUp) and "configuration error" in decision.reason


def test_policy_and_option_values_are_checked() -> None:
    with pytest.raises(ValueError, match="max_start_failures"):
        RestartPolicy(max_start_failures=0)
    with pytest.raises(ValueError, match="initial_delay"):
        RestartPolicy(initial_delay=0)
    with pytest.raises(ValueError, match="max_delay"):
        RestartPolicy(initial_delay=2, max_delay=1)
    assert parse_workers("3") == 3
    assert parse_workers("auto") >= 1
    for bad in ("0", "-2", "two", ""):
        with pytest.raises(ValueError, match="number of processes"):
            parse_workers(bad)
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(3) == "exited with code 3"


# -- the engine's side: SO_REUSEPORT, the worker's name, /health, /metrics -----------------------
async def test_reuseport_listeners_share_a_port_that_a_plain_listener_cannot() -> None:
    first = await open_reuseport_listeners(0, host="127.0.0.1")
    port = first[0].socket.getsockname()[1]
    second = await open_reuseport_listeners(port, host="127.0.0.1")
    try:
        assert second[0].socket.getsockname()[1] == port
        with pytest.raises(OSError) as info:
            await trio.open_tcp_listeners(port, host="127.0.0.1")
        assert info.value.errno == errno.EADDRINUSE
    finally:
        for listener in (*first, *second):
            await listener.aclose()


def test_a_worker_appends_its_number_to_server_id() -> None:
    # Two workers of an app that names its server must not share a name on the broker.
    assert WebSocketManager(server_id="chat", worker_id=1).server_id == "chat-w1"
    assert WebSocketManager(worker_id=0).server_id.endswith("-w0")
    assert "-w" not in WebSocketManager(server_id="chat").server_id
    with pytest.raises(ValueError, match="worker_id"):
        WebSocketManager(worker_id=-1)
    with pytest.raises(ValueError, match="reuse_port"):
        WebSocketManager(reuse_port="yes")  # type: ignore[arg-type]


async def test_health_and_metrics_name_the_worker(
    make_manager: Callable[..., WebSocketManager],
) -> None:
    from trio_rt import WebSocketMetrics

    manager = make_manager(worker_id=3, reuse_port=True)
    metrics = WebSocketMetrics(manager)
    async with manager, metrics:
        status, body = await http_get(manager.url, "/health")
        assert status == 200 and json.loads(body)["worker"] == 3
        status, body = await http_get(manager.url, "/metrics")
        assert status == 200
        line = f'trio_rt_worker_info{{server_id="{manager.server_id}",worker="3"}} 1.0'
        assert line in body.decode(), body.decode()
        assert metrics.get_stats().worker == 3
    plain = make_manager()
    async with plain:
        status, body = await http_get(plain.url, "/health")
        assert json.loads(body)["worker"] is None


def test_memory_backends_are_not_shareable() -> None:
    from trio_rt import MemoryBroker, RoomHistory
    from trio_rt.redis import RedisBroker

    problem = shareable_problem(WebSocketManager(broker=MemoryBroker()))
    assert problem is not None and "MemoryBroker" in problem
    redis = RedisBroker("redis://127.0.0.1:1/0")  # not connected: only its kind matters
    assert shareable_problem(WebSocketManager(broker=redis)) is None
    problem = shareable_problem(WebSocketManager(broker=redis, history=RoomHistory()))
    assert problem is not None and "RedisSequencer" in problem


def test_the_deployment_sample_is_a_worker_ready_factory() -> None:
    from trio_rt_examples.docs import deployment_samples

    manager = deployment_samples.build_app(host="127.0.0.1", port=0, reuse_port=True, worker_id=2)
    assert manager.server_id == "web-1-w2" and manager.options.reuse_port
    assert shareable_problem(manager) is None


# -- the command line -----------------------------------------------------------------------------
async def run_cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "trio_rt", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


async def test_bad_worker_options_fail_clearly() -> None:
    for args, expected in [
        (
            ["serve", f"{APP}:build_app", "--workers", "0"],
            b"number of processes",
        ),
        (
            ["serve", f"{APP}:build_app", "--workers", "x"],
            b"number of processes",
        ),
        (["serve", "no_colon", "--workers", "2"], b"expected module:attribute"),
        (
            [
                "serve",
                f"{APP}:build_app",
                "--workers",
                "2",
                "--drain-timeout",
                "0",
            ],
            b"--drain-timeout must be a positive finite number",
        ),
    ]:
        with trio.fail_after(30):
            result = await run_cli(*args)
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr, result.stderr


async def test_an_app_on_memory_backends_is_refused_once_without_restarts() -> None:
    with trio.fail_after(60):
        result = await run_cli(
            "serve",
            f"{APP}:build_memory_app",
            "--workers",
            "2",
            "--port",
            "0",
        )
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "MemoryBroker" in err and "RedisBroker" in err, err
    assert "configuration error" in err
    assert err.count("started (pid") == 1, err  # worker 0 only, not retried, no worker 1


async def test_an_unknown_app_is_refused_once() -> None:
    with trio.fail_after(60):
        result = await run_cli("serve", f"{APP}:nosuch", "--workers", "2", "--port", "0")
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "has no attribute 'nosuch'" in err and err.count("started (pid") == 1, err


async def test_a_port_held_without_reuse_port_is_refused_once(redis_url: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with trio.fail_after(60):
            result = await run_cli(
                "serve",
                f"{APP}:build_app",
                "--workers",
                "2",
                "--port",
                str(port),
                env={"WORKERS_TEST_REDIS_URL": redis_url},
            )
    assert result.returncode == 1
    err = result.stderr.decode()
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Address already in use" in err, err
    assert "configuration error" in err and err.count("started (pid") == 1, err


async def test_workers_sharing_one_server_id_are_refused(redis_url: str) -> None:
    # The factory drops its options (the command still makes each worker listen with
    # SO_REUSEPORT on the same port), and its fixed server_id would be the same in both.
    with trio.fail_after(60):
        result = await run_cli(
            "serve",
            f"{APP}:build_app_dropping_options",
            "--workers",
            "2",
            "--port",
            "0",
            env={"WORKERS_TEST_REDIS_URL": redis_url},
        )
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "workers 0 and 1 have the same server_id 'same'" in err, err


async def test_a_worker_that_keeps_failing_to_start_makes_the_supervisor_give_up() -> None:
    with trio.fail_after(60):
        result = await run_cli(
            "serve",
            f"{APP}:build_crashing_app",
            "--workers",
            "2",
            "--port",
            "0",
            "--max-start-failures",
            "3",
        )
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "failed to start 3 times in a row (last: exited with code 1)" in err, err
    assert err.count("restarting it in") == 2, err  # 3 starts, 2 restarts with backoff
    assert "0.5 s" in err and "1.0 s" in err


# -- real workers on real Redis -------------------------------------------------------------------
@dataclass
class Supervised:
    proc: trio.Process
    url: str
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def ready(self) -> list[tuple[int, int, str, int]]:
        """(worker, pid, server_id, start) of every ``ready`` line so far."""
        return [(int(w), int(p), s, int(n)) for w, p, s, n in READY.findall(self.text())]

    def pids(self) -> dict[int, int]:
        """The pid each worker has now (its latest start)."""
        return {w: p for w, p, _, _ in self.ready()}


def alive(pid: int) -> bool:
    """Is `pid` a live process (a zombie is not)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@asynccontextmanager
async def supervisor(
    redis_url: str,
    tmp_path: Path,
    *args: str,
    workers: int = 2,
    app: str = f"{APP}:build_app",
) -> AsyncIterator[Supervised]:
    """``trio-rt serve {APP}:build_app --workers N --port 0``; yields once it said
    every worker listens. Whatever is left is killed on the way out (workers included)."""
    log = tmp_path / "supervisor.log"
    env = {
        **os.environ,
        "WORKERS_TEST_REDIS_URL": redis_url,
        "WORKERS_TEST_PREFIX": f"workers{uuid.uuid4().hex[:10]}",
        "PYTHONPATH": str(ROOT),
    }
    argv = [sys.executable, "-m", "trio_rt", "serve", app]
    argv += ["--workers", str(workers), "--host", "127.0.0.1", "--port", "0", *args]
    with open(log, "wb") as err:  # noqa: ASYNC230 - a local file, before anything runs
        proc = await trio.lowlevel.open_process(
            argv, stdout=subprocess.PIPE, stderr=err, cwd=ROOT, env=env
        )
    assert proc.stdout is not None
    out = b""
    started: Supervised | None = None
    try:
        with trio.fail_after(60):
            while not (m := LISTENING.search(out)):
                chunk = await proc.stdout.receive_some()
                assert chunk, f"the supervisor exited early:\n{log.read_text()}"
                out += chunk
        started = Supervised(proc, f"ws://{m.group(1).decode()}:{m.group(2).decode()}/", log)
        assert len(started.pids()) == workers
        yield started
    finally:
        pids = started.pids() if started is not None else {}
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
            for pid in pids.values():  # a failed test must not leave workers behind
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


async def recv(ws: ClientConnection) -> dict[str, Any]:
    with trio.fail_after(20):
        data = json.loads(await ws.recv())
    assert isinstance(data, dict)
    return data


@asynccontextmanager
async def members(url: str, n: int, room: str = "room") -> AsyncIterator[list[Member]]:
    """`n` raw WebSocket clients in `room`, closed on the way out."""
    async with AsyncExitStack() as stack:
        out = []
        for _ in range(n):
            ws = await stack.enter_async_context(connect(url))
            welcome = await recv(ws)
            await ws.send(json.dumps({"type": "join_room", "room": room}))
            assert (await recv(ws))["type"] == "room_joined"
            out.append(Member(ws, str(welcome["server_id"])))
        yield out


@dataclass
class Member:
    ws: ClientConnection
    server_id: str


@pytest.mark.slow
async def test_clients_spread_over_workers_and_every_broadcast_arrives_once(
    redis_url: str, tmp_path: Path
) -> None:
    async with supervisor(redis_url, tmp_path) as sup, members(sup.url, 16) as clients:
        by_worker = Counter(c.server_id.rsplit("-w", 1)[1] for c in clients)
        assert len(by_worker) == 2, by_worker  # the kernel spread them (2^-15 odds otherwise)
        # /health answers for the worker that took the connection
        for _ in range(8):
            status, body = await http_get(sup.url, "/health")
            assert status == 200 and json.loads(body)["worker"] in (0, 1)
        # Broadcasts from members of both workers: every member gets each one once.
        first = clients[0].server_id
        senders = [clients[0].ws, next(c.ws for c in clients if c.server_id != first)]
        count = 40
        for n in range(count):
            await senders[n % 2].send(json.dumps({"type": "publish", "room": "room", "n": n}))
        # Then one more from each: each follows its sender's earlier messages through the same
        # path, so a duplicate of any of them would arrive before it.
        for n, sender in enumerate(senders, start=count):
            await sender.send(json.dumps({"type": "publish", "room": "room", "n": n}))
        for client in clients:
            got: Counter[int] = Counter()
            with trio.fail_after(30):
                while not (count in got and count + 1 in got):
                    msg = await recv(client.ws)
                    if msg["type"] == "m":
                        got[int(msg["n"])] += 1
            assert set(got) == set(range(count + 2)) and max(got.values()) == 1, got


async def http_get(url: str, path: str) -> tuple[int, bytes]:
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


@pytest.mark.slow
async def test_a_killed_worker_is_restarted_and_its_clients_reconnect(
    redis_url: str, tmp_path: Path
) -> None:
    async with supervisor(redis_url, tmp_path) as sup:
        clients = [
            WebSocketClient(sup.url, initial_delay=0.05, max_delay=0.5, proxy=None)
            for _ in range(12)
        ]
        async with trio.open_nursery() as nursery:
            for client in clients:
                await nursery.start(_run_client, client)
            victim_pid = sup.pids()[1]
            on_victim = [c for c in clients if server_id(c).endswith("-w1")]
            assert on_victim, [server_id(c) for c in clients]
            os.kill(victim_pid, signal.SIGKILL)
            await wait_until(lambda: any(w == 1 and n == 2 for w, _, _, n in sup.ready()), 60)
            text = sup.text()
            assert f"worker 1 (pid {victim_pid}) killed by SIGKILL; restarting it in" in text
            assert sup.pids()[1] != victim_pid and sup.pids()[0] in [
                p for _, p, _, _ in sup.ready()
            ]
            # Its clients came back (to either worker) and are in their room again.
            await wait_until(
                lambda: all(
                    c.stats.connections >= 2 and c.state is ClientState.CONNECTED for c in on_victim
                ),
                60,
            )
            # A broadcast after the restart reaches every client once.
            await clients[0].send({"type": "publish", "room": "room", "n": 1000})
            for client in clients:
                with trio.fail_after(30):
                    while True:
                        msg = await client.receive()
                        if msg.get("type") == "m" and msg["n"] == 1000:
                            break
            nursery.cancel_scope.cancel()
        assert sup.proc.returncode is None  # the supervisor itself never stopped


def server_id(client: WebSocketClient) -> str:
    return str((client.welcome or {}).get("server_id"))


async def _run_client(
    client: WebSocketClient, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    async with client:
        await client.join_room("room")
        task_status.started()
        await trio.sleep_forever()


async def closed_with_1001(clients: list[Member]) -> None:
    """Each client's connection ends with close code 1001 (a graceful shutdown)."""
    for client in clients:
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await recv(client.ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001


@pytest.mark.slow
async def test_sigterm_drains_every_worker_and_the_supervisor_exits_0(
    redis_url: str, tmp_path: Path
) -> None:
    async with supervisor(redis_url, tmp_path) as sup, members(sup.url, 8) as clients:
        pids = sup.pids()
        sup.proc.send_signal(signal.SIGTERM)
        await closed_with_1001(clients)
        with trio.fail_after(60):
            assert await sup.proc.wait() == 0
        assert not any(alive(pid) for pid in pids.values())
        text = sup.text()
        assert "SIGTERM: draining 2 worker(s)" in text
        assert text.count("exited with code 0") == 2 and "every worker has ended" in text


@pytest.mark.slow
async def test_no_worker_outlives_a_supervisor_killed_with_sigkill(
    redis_url: str, tmp_path: Path
) -> None:
    async with supervisor(redis_url, tmp_path) as sup, members(sup.url, 4) as clients:
        pids = sup.pids()
        sup.proc.kill()
        with trio.fail_after(10):
            await sup.proc.wait()
        # The lifeline's end-of-file: each worker shuts down gracefully on its own.
        await closed_with_1001(clients)
        await wait_until(lambda: not any(alive(pid) for pid in pids.values()), 30)
        assert sup.text().count("supervisor gone: shutting down gracefully") == 2


@pytest.mark.slow
async def test_a_second_signal_kills_workers_that_do_not_end(
    redis_url: str, tmp_path: Path
) -> None:
    async with supervisor(redis_url, tmp_path, app=f"{APP}:build_stuck_app") as sup:
        pids = sup.pids()
        sup.proc.send_signal(signal.SIGTERM)
        # Both workers began their shutdown (and will not finish it): now force.
        await wait_until(lambda: sup.text().count("shutting down gracefully") == 2, 30)
        sup.proc.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            assert await sup.proc.wait() == 1
        assert not any(alive(pid) for pid in pids.values())
        text = sup.text()
        assert text.count("SIGINT again: killing worker") == 2, text
        assert "2 worker(s) did not end in time and were killed" in text


@pytest.mark.slow
async def test_the_drain_deadline_kills_workers_that_do_not_end(
    redis_url: str, tmp_path: Path
) -> None:
    async with supervisor(
        redis_url,
        tmp_path,
        "--drain-timeout",
        "1",
        app=f"{APP}:build_stuck_app",
    ) as sup:
        pids = sup.pids()
        sup.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await sup.proc.wait() == 1
        assert not any(alive(pid) for pid in pids.values())
        text = sup.text()
        assert text.count("still running 1 s after the drain began: killing worker") == 2, text


@pytest.mark.slow
async def test_the_cluster_benchmark_measures_two_workers(redis_url: str, tmp_path: Path) -> None:
    """``benchmarks.fanout_cluster``'s ``2 workers+redis`` set-up completes a tiny run and
    reports per worker (the table in docs/performance.md comes from it)."""
    out = tmp_path / "bench.json"
    # 16 clients: the kernel leaves one worker without any once in 2^15 runs
    argv = [sys.executable, "-m", "benchmarks.fanout_cluster", "--clients", "16"]
    argv += ["--messages", "20", "--runs", "1", "--setups", "2 workers+redis"]
    argv += ["--modes", "burst", "--wait-idle", "0", "--redis-url", redis_url, "--json", str(out)]
    with trio.fail_after(180):
        result = await trio.run_process(argv, cwd=ROOT, capture_stdout=True, capture_stderr=True)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    (run,) = json.loads(out.read_text())["runs"]
    assert run["completed"] and run["deliveries"] == 16 * 20
    assert sorted(run["workers"]) == [0, 1] and sum(run["clients_per_port"]) == 16
    assert len(run["server_cpu_s"]) == 2 and len(run["latency_p99_us_per_port"]) == 2


@pytest.mark.slow
async def test_an_orphaned_worker_whose_shutdown_hangs_exits_anyway(
    redis_url: str, tmp_path: Path
) -> None:
    async with supervisor(redis_url, tmp_path, app=f"{APP}:build_stuck_app") as sup:
        pids = sup.pids()
        sup.proc.kill()
        with trio.fail_after(10):
            await sup.proc.wait()
        # shutdown_timeout 5 s + close_timeout 5 s + 5 s; the guard is only a deadlock guard
        await wait_until(lambda: not any(alive(pid) for pid in pids.values()), 60)
        text = sup.text()
        assert text.count("supervisor gone and the shutdown still not over after 15 s") == 2

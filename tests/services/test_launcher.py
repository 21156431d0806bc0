"""The launcher package itself: its import surface, where it looks, how a start fails, its CLI.

Real processes throughout (redis-server, a Python child); no server is faked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import trio_rt.testing.services as services
from trio_rt.testing.services import ServiceError, default_state_dir, find_java17, main

ROOT = Path(__file__).resolve().parents[2]

# Every name other code imports from trio_rt.testing.services (tests, faults, benchmarks,
# examples, the pytest plugin): the split into modules must keep each one.
IMPORTED_ELSEWHERE = {
    "CassandraEndpoint",
    "CassandraServer",
    "RedisCluster",
    "RedisServer",
    "ServiceError",
    "cassandra_release_version",
    "parse_cassandra_endpoint",
    "parse_redis_url",
    "redis_command",
    "redis_ping",
}


def test_every_public_name_imports_from_the_package() -> None:
    assert set(services.__all__) >= IMPORTED_ELSEWHERE
    for name in services.__all__:
        assert getattr(services, name) is not None, name


def test_the_default_state_dir_of_a_checkout_is_its_dot_services(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TRIO_RT_SERVICES_DIR", raising=False)
    assert default_state_dir() == ROOT / ".services"


@pytest.fixture
def no_apt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIO_RT_NO_APT", "1")  # a test must never install packages


@pytest.mark.usefixtures("no_apt")
def test_trio_rt_java_home_is_the_only_candidate_when_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # docs/development.md and ./dev: "anything other than 17 is refused". A path without a
    # java must not fall back to another Java 17 found elsewhere.
    monkeypatch.setenv("TRIO_RT_JAVA_HOME", str(tmp_path / "no-such-jdk"))
    with pytest.raises(ServiceError, match=r"TRIO_RT_JAVA_HOME=.* is not a Java 17"):
        find_java17()


@pytest.mark.usefixtures("no_apt")
def test_trio_rt_java_home_is_used_when_it_is_java_17(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRIO_RT_JAVA_HOME", raising=False)
    home = find_java17(install=False)  # the suite's Cassandra needs one installed
    monkeypatch.setenv("TRIO_RT_JAVA_HOME", str(home))
    monkeypatch.setenv("JAVA_HOME", "/nonexistent")
    assert find_java17(install=False) == home


def _servers_under(state_dir: Path) -> list[int]:
    """Live processes running in a directory under ``state_dir`` (the launcher starts each
    server in its own directory there; redis-server rewrites its command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = Path(os.readlink(entry / "cwd"))
            except OSError:  # gone, or a zombie
                continue
            if cwd.is_relative_to(state_dir):
                found.append(int(entry.name))
    return found


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """A state dir; a server still running from it at the end is killed."""
    yield tmp_path
    for pid in _servers_under(tmp_path):
        os.kill(pid, signal.SIGKILL)


_START_AND_HANG = """
import sys
from trio_rt.testing.services import RedisServer
# --requirepass: PING gets NOAUTH, so the start waits for readiness until interrupted
RedisServer.start(sys.argv[1], extra_args=["--requirepass", "x"], timeout=300)
"""


def test_an_interrupted_start_leaves_no_server_running(state_dir: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _START_AND_HANG, str(state_dir)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        # Wait (a deadlock guard, not a timing) until redis-server is up and the start is
        # polling it: the child is then inside the readiness wait.
        deadline = time.monotonic() + 60
        while not any(
            "Ready to accept connections" in log.read_text(errors="replace")
            for log in state_dir.glob("redis-*/redis.log")
        ):
            assert child.poll() is None, child.communicate()[0]
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        (server_pid,) = _servers_under(state_dir)
        child.send_signal(signal.SIGINT)  # KeyboardInterrupt in the readiness wait
        output = child.communicate(timeout=60)[0].decode()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert "KeyboardInterrupt" in output
    assert _servers_under(state_dir) == [], f"redis-server {server_pid} left running"


def _record_a_dead_redis(state_dir: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid is not a redis-server any more (the marker check says so)
    record = {
        "pid": gone.pid,
        "host": "127.0.0.1",
        "port": 1,
        "dir": str(state_dir / "redis-1-x"),
        "log": str(state_dir / "redis-1-x" / "redis.log"),
    }
    (state_dir / "services.json").write_text(json.dumps({"services": {"redis": record}}))


def test_status_and_down_handle_a_recorded_server_that_died(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _record_a_dead_redis(state_dir)
    assert main(["--state-dir", str(state_dir), "status"]) == 3
    assert capsys.readouterr().out.split()[:2] == ["redis", "DEAD"]
    assert main(["--state-dir", str(state_dir), "down"]) == 0
    assert not (state_dir / "services.json").exists()


def test_main_called_twice_logs_each_line_once(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(2):
        _record_a_dead_redis(state_dir)
        assert main(["--state-dir", str(state_dir), "down"]) == 0
        err = capsys.readouterr().err
        assert err.splitlines() == ["[services] stopped redis"], err

"""The suite's own services: one Cassandra node for the session (it gets paused), and a
directory per scenario for the processes' logs."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from trio_rt.testing.services import CassandraServer, ServiceError

from .harness import ARTIFACTS, RESULTS, CassandraNode


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line per scenario run in this session (also in test-artifacts/faults/*.json)."""
    if RESULTS:
        terminalreporter.section("fault-injection suite")
        for line in RESULTS:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def faults_cassandra() -> Iterator[CassandraNode]:
    """A Cassandra node of the suite's own (never $TRIO_RT_CASSANDRA: a scenario pauses it)."""
    try:
        server = CassandraServer.start(die_with_parent=True)
    except ServiceError as exc:
        pytest.fail(f"could not start the fault suite's Cassandra:\n{exc}", pytrace=False)
    try:
        yield CassandraNode(server.host, server.port, server.pid)
    finally:
        server.stop()


@pytest.fixture
def workdir(request: pytest.FixtureRequest) -> Path:
    """test-artifacts/faults/<module>-<test name>/: the processes' logs and ack files (kept)."""
    module = request.node.path.stem.removeprefix("test_")
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{module}-{request.node.name}")
    path = ARTIFACTS / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path

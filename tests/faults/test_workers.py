"""Rooms with history on ``trio-rt serve --workers 2`` under faults (issue 16; docs/faults.md).

The rooms deployment of ``test_rooms.py`` (same clients, traffic and ledger), but each of its
two servers is a supervisor with two workers on one port: clients of one URL are spread over
two processes by the kernel, and a client that reconnects to the same URL may land on either.

- ``worker_kill9``: ``kill -9`` of one worker of s0 mid-traffic. The supervisor restarts it
  (logged); its clients reconnect (to whichever worker the kernel picks) and recover what they
  missed from the room history: nothing acknowledged is lost, nothing arrives twice.
- ``workers_sigterm``: SIGTERM to s0's supervisor: both workers drain (1001), it exits 0, and
  is started again; the clients move and recover the same way.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio

from .harness import Actor, CassandraNode, terminate_server, wait_until
from .test_rooms import Fault, Rooms, run_rooms

SERVERS = 2
WORKERS = 2


def on_worker(d: Rooms, server_index: int, worker: int) -> list[Actor]:
    """The clients connected to that worker now (its server_id is ``<name>-w<worker>``)."""
    server = d.servers[server_index]
    name = f"{server.name}-w{worker}"
    return [
        a for a in d.on(server) if a.client.welcome and a.client.welcome.get("server_id") == name
    ]


def kill_worker(server_index: int, worker: int) -> Fault:
    """``kill -9`` of one worker; the supervisor must restart it by itself."""

    async def fault(d: Rooms) -> None:
        server = d.servers[server_index]
        pid = server.worker_pids()[worker]
        victims = on_worker(d, server_index, worker)
        os.kill(pid, signal.SIGKILL)
        d.timeline.note(f"kill -9 {server.name} worker {worker} ({len(victims)} clients on it)")
        assert d.watchdog is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                d.watchdog.expect_reconnect, victims, f"kill -9 of {server.name} worker {worker}"
            )
            await wait_until(
                lambda: server.worker_pids().get(worker, pid) != pid,
                60,
                f"{server.name} restarted worker {worker}",
            )
            d.timeline.note(f"{server.name} worker {worker} restarted by its supervisor")
        assert f"(pid {pid}) killed by SIGKILL; restarting it" in server.log.read_text()

    return fault


@pytest.mark.slow
async def test_worker_kill9(faults_cassandra: CassandraNode, workdir: Path) -> None:
    await run_rooms(
        "worker_kill9",
        faults_cassandra,
        workdir,
        kill_worker(0, 1),
        server_count=SERVERS,
        workers=WORKERS,
    )


@pytest.mark.slow
async def test_workers_sigterm(faults_cassandra: CassandraNode, workdir: Path) -> None:
    await run_rooms(
        "workers_sigterm",
        faults_cassandra,
        workdir,
        terminate_server(0),
        server_count=SERVERS,
        workers=WORKERS,
    )

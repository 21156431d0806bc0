"""Rooms with history under faults: nothing acknowledged is lost, nothing arrives twice, each
room in offset order (issue 12; docs/faults.md).

Three server processes (`app.build_rooms`: RedisBroker, RoomHistory on CassandraStreamStore,
RedisSequencer) on fixed ports, the suite's own Redis and Cassandra. 40 receivers are members
of both rooms from start to end; 4 senders (two per room) send 12 ``say`` messages a second
for 20 s. A fault hits 5 s in. Then every receiver's deliveries are compared with what the
senders got ``said`` for (`ledger.compare`).
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from .app import Config, cassandra_session, create_schema
from .harness import (
    Actor,
    AppServer,
    CassandraNode,
    Receiver,
    Record,
    RedisNode,
    Sender,
    TcpProxy,
    Timeline,
    Watchdog,
    dump_deliveries,
    kill_server,
    log_summary,
    make_client,
    redis_restart_empty,
    running,
    settle,
    terminate_server,
    wait_until,
)
from .ledger import compare

ROOMS = ("room-a", "room-b")
SERVERS = 3
RECEIVERS = 40
SENDERS = 4
RATE = 12.0  # messages per second per sender
DURATION = 20.0  # seconds of traffic: at least 5 s after each fault is over
FAULT_AT = 5.0  # seconds into the traffic
QUIET = 5.0  # nothing new for this long, every client connected: what is missing is lost
GUARD = 120.0  # deadlock guard of the settling phase

PROXIED = 4  # receivers behind the TCP proxy (the cut scenario)
PROXIED_BUFFER = 64  # their receive buffer: a paused app fills it quickly
FLOOD = 60  # messages each sender sends back to back during the cut scenario
BUSY_AFTER_CUT = 8.0  # the paused receivers' app stays busy past a keepalive ping (every 5 s)


@dataclass
class Rooms:
    """One rooms deployment, as the faults see it."""

    timeline: Timeline
    redis: RedisNode
    cassandra: CassandraNode
    servers: list[AppServer]
    receivers: list[Receiver] = field(default_factory=list)
    senders: list[Sender] = field(default_factory=list)
    proxy: TcpProxy | None = None
    watchdog: Watchdog | None = None

    @property
    def actors(self) -> list[Actor]:
        return [*self.receivers, *self.senders]

    def on(self, server: AppServer) -> list[Actor]:
        return [a for a in self.actors if a.connected and a.client.url == server.url]


Fault = Callable[[Rooms], Awaitable[None]]


async def run_rooms(
    scenario: str,
    cassandra: CassandraNode,
    workdir: Path,
    fault: Fault | None,
    *,
    proxied: int = 0,
    server_count: int = SERVERS,
    workers: int = 1,
) -> None:
    timeline = Timeline()
    redis = RedisNode(workdir)
    await redis.start()
    tag = uuid.uuid4().hex[:10]
    config = Config(redis.url, cassandra.endpoint, f"faults_{tag}", f"faults{tag}", "", None)
    async with cassandra_session(config) as session:
        await session.create_keyspace(config.keyspace)
        await create_schema(session, config.keyspace)
    servers = [
        AppServer(f"s{i}", "build_rooms", config, workdir, workers=workers)
        for i in range(server_count)
    ]
    d = Rooms(timeline, redis, cassandra, servers)
    d.watchdog = Watchdog(timeline)
    record = Record("rooms", scenario, _params(proxied, server_count, workers), timeline)
    try:
        async with trio.open_nursery() as nursery:
            for server in servers:
                nursery.start_soon(server.start)
        timeline.note("servers listening")
        async with trio.open_nursery() as background:
            urls = [s.url for s in servers]
            if proxied:
                d.proxy = TcpProxy(servers[0].port)
                await background.start(d.proxy.run)
            for i in range(RECEIVERS):
                if i < proxied:
                    assert d.proxy is not None
                    # "wait": the client stops reading its socket while the app is busy
                    # (backpressure), the condition under which a cut once hung the client.
                    client = make_client(
                        [d.proxy.url, *urls[1:]],
                        0,
                        receive_buffer=PROXIED_BUFFER,
                        receive_overflow="wait",
                    )
                else:
                    client = make_client(urls, i)
                d.receivers.append(Receiver(f"r{i:02d}", client, ROOMS))
            for i in range(SENDERS):
                d.senders.append(Sender(f"p{i}", make_client(urls, i), ROOMS[i % len(ROOMS)]))
            async with running(d.actors):
                timeline.note("clients connected, in their rooms")
                await _traffic(d, fault)
                timeline.note("traffic done")
                record.settled = await settle(
                    lambda: _complete(d),
                    lambda: _progress(d),
                    lambda: all(a.connected or a.cancelled for a in d.actors),
                    quiet=QUIET,
                    guard=GUARD,
                )
                timeline.note(f"settled: {record.settled}")
                _tally(d, record, workdir)
                stats = {s.name: await s.stats() for s in servers}
                record.extra["servers"] = stats
                # What the running servers say they skipped or delivered late (a killed
                # server's counters are gone): out-of-order deliveries should match "late".
                record.extra["server_reorder"] = {
                    key: sum(int(v.get(f"reorder_{key}", 0)) for v in stats.values())
                    for key in ("skipped", "late")
                }
            background.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            for server in servers:
                await server.stop()
            await redis.stop()
    record.extra["logs"] = log_summary(
        s.logdir / f"{s.name}.{n}.log" for s in servers for n in (1, 2)
    )
    record.finish()


def _params(proxied: int, servers: int = SERVERS, workers: int = 1) -> dict[str, object]:
    return {
        "servers": servers,
        "workers_per_server": workers,
        "receivers": RECEIVERS,
        "senders": SENDERS,
        "rooms": len(ROOMS),
        "rate_per_sender": RATE,
        "seconds": DURATION,
        "fault_at": FAULT_AT,
        "proxied_receivers": proxied,
        "reorder_window": os.environ.get("FAULTS_REORDER_WINDOW") or "default (0.2)",
    }


async def _traffic(d: Rooms, fault: Fault | None) -> None:
    count = int(RATE * DURATION)
    async with trio.open_nursery() as nursery:
        for sender in d.senders:
            nursery.start_soon(sender.traffic, count, RATE)
        if fault is not None:
            await trio.sleep(FAULT_AT)  # the traffic's schedule, not a settle delay
            await fault(d)


def _acked(d: Rooms) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {room: set() for room in ROOMS}
    for sender in d.senders:
        out[sender.room].update(sender.acked)
    return out


def _complete(d: Rooms) -> bool:
    if any(s.answered() < len(s.sent) for s in d.senders):
        return False
    acked = _acked(d)
    return all(acked[room] <= r.ids[room] for r in d.receivers if not r.cancelled for room in ROOMS)


def _progress(d: Rooms) -> tuple[int, int, int]:
    return (
        sum(r.messages for r in d.receivers),
        sum(s.answered() for s in d.senders),
        sum(a.client.stats.connections for a in d.actors),
    )


def _tally(d: Rooms, record: Record, workdir: Path) -> None:
    acked = _acked(d)
    record.acknowledged = sum(len(s.acked) for s in d.senders)
    record.refused = sum(len(s.refused) for s in d.senders)
    record.unanswered = sum(len(s.sent) - s.answered() for s in d.senders)
    positions = {mid: p for s in d.senders for mid, p in s.acked.items()}
    for receiver in d.receivers:
        for room in ROOMS:
            report = compare(receiver.name, room, acked[room], receiver.got[room])
            record.add(report)
            if not report.counts.clean:
                dump_deliveries(workdir, report, receiver.got[room], positions)
    reasons: Counter[str] = Counter()
    for actor in d.actors:
        reasons.update(x.rsplit(":", 1)[-1] for x in actor.recovery_failed)
    assert d.watchdog is not None
    record.hung = list(d.watchdog.hung)
    record.extra.update(
        {
            "sent": sum(len(s.sent) for s in d.senders),
            "refusals": dict(Counter(c for s in d.senders for c in s.refused.values())),
            "recovery_failed": dict(reasons),
            "duplicates_dropped_by_clients": sum(r.client.stats.duplicates for r in d.receivers),
            "reconnections": sum(max(0, a.client.stats.connections - 1) for a in d.actors),
            "receivers_with_faults": len({r.client for r in record.reports if not r.counts.clean}),
        }
    )


# -- faults ---------------------------------------------------------------------------------------


def redis_down(seconds: float = 8.0) -> Fault:
    """Redis gone for longer than RedisBroker's reconnect backoff (5 s at most), then back with
    its data (SHUTDOWN SAVE, restart): an outage, not a data loss."""

    async def fault(d: Rooms) -> None:
        await d.redis.shutdown_save()
        d.timeline.note("redis shut down (data saved)")
        await trio.sleep(seconds)  # part of the fault: Redis stays down
        await d.redis.start(empty=False)
        d.timeline.note("redis back, with its data")

    return fault


def cassandra_pause(seconds: float = 4.0) -> Fault:
    """The suite's Cassandra frozen (SIGSTOP) for `seconds`, then SIGCONT."""

    async def fault(d: Rooms) -> None:
        d.cassandra.pause()
        d.timeline.note("cassandra paused")
        try:
            await trio.sleep(seconds)  # part of the fault
        finally:
            d.cassandra.resume()
            d.timeline.note("cassandra resumed")

    return fault


async def cut_while_flooding(d: Rooms) -> None:
    """The receivers behind the proxy stop reading (their app is busy; their clients use the
    ``receive_overflow="wait"`` policy, so they stop reading the socket too), the senders flood
    the rooms, and once each of those clients was sent far more than it buffers, the proxy
    resets their TCP connections. The app stays busy a little longer (the client's heartbeat
    meets the dead connection meanwhile), then reads again: each client must notice the dead
    connection, reconnect and recover what it missed."""
    proxy, watchdog = d.proxy, d.watchdog
    assert proxy is not None and watchdog is not None
    victims = [r for r in d.receivers if r.connected and r.client.url == proxy.url]
    links = proxy.open_links()
    assert victims and len(links) == len(victims), (len(victims), len(links))
    before = {id(link): link.frames.frames for link in links}
    for receiver in victims:
        receiver.pause()
    d.timeline.note(f"{len(victims)} proxied receivers stop reading; flood")
    async with trio.open_nursery() as nursery:
        for sender in d.senders:
            nursery.start_soon(sender.burst, FLOOD)
    # Sent: the receive buffer, the one message the client's reader holds, websockets' 16
    # queued frames (its high-water mark), and more behind them in the socket.
    needed = PROXIED_BUFFER + 1 + 16 + 20
    await wait_until(
        lambda: all(link.frames.frames - before[id(link)] >= needed for link in links),
        60,
        f"{needed} frames sent through the proxy to each paused receiver",
    )
    await trio.sleep(0.1)  # the client's frame reader runs on this thread: let it take them
    cut = proxy.cut()
    d.timeline.note(f"proxy cut {cut} connections")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watchdog.expect_reconnect, victims, "the proxy cut their connections")
        await trio.sleep(BUSY_AFTER_CUT)  # part of the fault: the app is still busy
        d.timeline.note("the proxied receivers read again")
        for receiver in victims:
            receiver.resume()


# -- the scenarios --------------------------------------------------------------------------------
@pytest.mark.slow
async def test_control_no_fault(faults_cassandra: CassandraNode, workdir: Path) -> None:
    """No fault: the harness itself must count zero lost, duplicated, out of order."""
    await run_rooms("control", faults_cassandra, workdir, None)


@pytest.mark.slow
async def test_server_kill9(faults_cassandra: CassandraNode, workdir: Path) -> None:
    await run_rooms("server_kill9", faults_cassandra, workdir, kill_server(1))


@pytest.mark.slow
async def test_server_sigterm(faults_cassandra: CassandraNode, workdir: Path) -> None:
    await run_rooms("server_sigterm", faults_cassandra, workdir, terminate_server(1))


@pytest.mark.slow
async def test_redis_restarted_empty(faults_cassandra: CassandraNode, workdir: Path) -> None:
    await run_rooms("redis_restarted_empty", faults_cassandra, workdir, redis_restart_empty)


@pytest.mark.slow
async def test_redis_down_longer_than_backoff(
    faults_cassandra: CassandraNode, workdir: Path
) -> None:
    await run_rooms("redis_down_8s", faults_cassandra, workdir, redis_down(8.0))


@pytest.mark.slow
async def test_cassandra_paused(faults_cassandra: CassandraNode, workdir: Path) -> None:
    await run_rooms("cassandra_paused_4s", faults_cassandra, workdir, cassandra_pause(4.0))


@pytest.mark.slow
async def test_tcp_cut_while_flooding(faults_cassandra: CassandraNode, workdir: Path) -> None:
    await run_rooms(
        "tcp_cut_while_flooding", faults_cassandra, workdir, cut_while_flooding, proxied=PROXIED
    )

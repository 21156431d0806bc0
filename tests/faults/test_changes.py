"""Change streams under faults: every acknowledged write reaches each matching subscription
and each named watcher once, in position order (issue 12; docs/faults.md).

Two server processes (`app.build_changes`: ChangeStreamManager over the suite's Cassandra,
RedisSequencer, RedisBroker), each with a named watcher journaling what it is handed. Three
writer processes insert 300 rows each (20 a second) through the captured `Database`; a write
is acknowledged when its insert returned. 16 clients hold one filtered subscription each,
from before the first write to the end. A fault hits 5 s into the writes.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from .app import CATEGORIES, ITEMS, Config, cassandra_session, create_schema, item_row
from .harness import (
    Actor,
    AppServer,
    CassandraNode,
    Record,
    RedisNode,
    Subscriber,
    Timeline,
    Watchdog,
    Writer,
    dump_deliveries,
    kill_server,
    log_summary,
    make_client,
    matches,
    read_watch_log,
    redis_restart_empty,
    running,
    settle,
    terminate_server,
    wait_exit,
    wait_until,
)
from .ledger import Counts, Delivery, compare, repeats_after_kill

SERVERS = 2
WRITERS = 3
WRITES = 300  # per writer
WRITE_RATE = 20.0  # per writer, per second
SUBSCRIBERS = 16
FAULT_AT = 5.0  # seconds into the writes
# Nothing new for this long, every client connected: what is missing is lost. Longer than the
# change tails' hole_timeout (10 s), after which a hole is skipped and what waits behind it
# goes out.
QUIET = 15.0
GUARD = 150.0  # deadlock guard of the settling phase


def subscriber_filters(i: int) -> dict[str, Any]:
    """Four kinds of filters over the 16 subscribers (equality, ``in``, a range, two columns)."""
    kind = i % 4
    if kind == 0:
        return {"category": CATEGORIES[(i // 4) % len(CATEGORIES)]}
    if kind == 1:
        return {"category": {"in": [CATEGORIES[i % 4], CATEGORIES[(i + 2) % 4]]}}
    if kind == 2:
        return {"score": {"gte": 20 * (i // 4)}}
    return {"writer": f"w{i % WRITERS}", "score": {"lt": 70}}


def row_of(item_id: str) -> dict[str, Any]:
    writer, _, seq = item_id[1:].partition("-")
    return item_row(int(writer), int(seq))


@dataclass
class Changes:
    timeline: Timeline
    redis: RedisNode
    cassandra: CassandraNode
    servers: list[AppServer]
    workdir: Path
    subscribers: list[Subscriber] = field(default_factory=list)
    writers: list[Writer] = field(default_factory=list)
    watchdog: Watchdog | None = None
    # A watcher killed with kill -9 may hand out its last batch again (docs/streams.md).
    repeats_allowed: bool = False

    @property
    def actors(self) -> list[Actor]:
        return list(self.subscribers)

    def on(self, server: AppServer) -> list[Actor]:
        return [a for a in self.actors if a.connected and a.client.url == server.url]

    def watch_logs(self) -> dict[str, list[Delivery]]:
        """Each server's watcher journal, less the repeats a kill -9 may cause."""
        return {name: counted for name, (counted, _) in self.watch_journals().items()}

    def watch_journals(self) -> dict[str, tuple[list[Delivery], list[Delivery]]]:
        """Per server: (the watcher's deliveries that count, the repeats its kill -9 caused:
        none unless `repeats_allowed`)."""
        out = {}
        for s in self.servers:
            lives = read_watch_log(self.workdir / f"watch-{s.name}.jsonl")
            if self.repeats_allowed:
                out[s.name] = repeats_after_kill(lives)
            else:
                out[s.name] = ([j.delivery for life in lives for j in life], [])
        return out

    def acked(self) -> tuple[set[str], int]:
        acked: set[str] = set()
        refused = 0
        for writer in self.writers:
            ok, no = writer.outcomes()
            acked.update(ok)
            refused += len(no)
        return acked, refused


Fault = Callable[[Changes], Awaitable[None]]


async def run_changes(
    scenario: str,
    cassandra: CassandraNode,
    workdir: Path,
    fault: Fault | None,
    *,
    repeats_allowed: bool = False,
) -> None:
    timeline = Timeline()
    redis = RedisNode(workdir)
    await redis.start()
    tag = uuid.uuid4().hex[:10]
    config = Config(redis.url, cassandra.endpoint, f"faults_{tag}", f"faults{tag}", "", workdir)
    async with cassandra_session(config) as session:
        await session.create_keyspace(config.keyspace)
        await create_schema(session, config.keyspace)
    servers = [AppServer(f"s{i}", "build_changes", config, workdir) for i in range(SERVERS)]
    d = Changes(timeline, redis, cassandra, servers, workdir, repeats_allowed=repeats_allowed)
    d.watchdog = Watchdog(timeline)
    params = {
        "servers": SERVERS,
        "writers": WRITERS,
        "writes_per_writer": WRITES,
        "write_rate": WRITE_RATE,
        "subscribers": SUBSCRIBERS,
        "fault_at": FAULT_AT,
    }
    record = Record("changes", scenario, params, timeline)
    try:
        async with trio.open_nursery() as nursery:
            for server in servers:
                nursery.start_soon(server.start)
        timeline.note("servers listening (named watchers started)")
        urls = [s.url for s in servers]
        for i in range(SUBSCRIBERS):
            d.subscribers.append(
                Subscriber(f"sub{i:02d}", make_client(urls, i), ITEMS.name, subscriber_filters(i))
            )
        async with running(d.actors):
            timeline.note("subscriptions live")
            d.writers = [Writer(k, config, workdir, WRITES, WRITE_RATE) for k in range(WRITERS)]
            for writer in d.writers:
                writer.spawn()
            await wait_until(lambda: all(w.ready() for w in d.writers), 90, "writers ready")
            for writer in d.writers:
                writer.go()
            timeline.note("writers go")
            async with trio.open_nursery() as nursery:
                if fault is not None:
                    nursery.start_soon(_fault_at, d, fault)
                for writer in d.writers:
                    assert writer.proc is not None
                    nursery.start_soon(wait_exit, writer.proc, 120)
            timeline.note("writers done")
            record.settled = await settle(
                lambda: _complete(d),
                lambda: _progress(d),
                lambda: all(a.connected or a.cancelled for a in d.actors),
                quiet=QUIET,
                guard=GUARD,
            )
            timeline.note(f"settled: {record.settled}")
            _tally(d, record)
            record.extra["servers"] = {s.name: await s.stats() for s in servers}
    finally:
        with trio.CancelScope(shield=True):
            for writer in d.writers:
                await writer.stop()
            for server in servers:
                await server.stop()
            await redis.stop()
    logs = [s.logdir / f"{s.name}.{n}.log" for s in servers for n in (1, 2)]
    record.extra["logs"] = log_summary([*logs, *(w.log for w in d.writers)])
    record.finish()
    # The writers' nudges reached the servers (a channel_prefix that differs from the servers'
    # leaves every tail on its 0.5 s poll: the promises hold, the scenario runs another path).
    stats = record.extra.get("servers", {})
    assert all(s["changes"]["nudges"] > 0 for s in stats.values()), stats


async def _fault_at(d: Changes, fault: Fault) -> None:
    await trio.sleep(FAULT_AT)  # the traffic's schedule, not a settle delay
    await fault(d)


def _expected(d: Changes, acked: set[str]) -> dict[str, set[str]]:
    rows = {item_id: row_of(item_id) for item_id in acked}
    return {
        s.name: {i for i, row in rows.items() if matches(s.filters, row)} for s in d.subscribers
    }


def _complete(d: Changes) -> bool:
    acked, _ = d.acked()
    expected = _expected(d, acked)
    if not all(expected[s.name] <= s.ids for s in d.subscribers if not s.cancelled):
        return False
    return all(acked <= {x.id for x in got} for got in d.watch_logs().values())


def _progress(d: Changes) -> tuple[int, ...]:
    return (
        sum(s.messages for s in d.subscribers),
        sum(len(got) for got in d.watch_logs().values()),
        sum(a.client.stats.connections for a in d.actors),
    )


def _tally(d: Changes, record: Record) -> None:
    acked, refused = d.acked()
    record.acknowledged = len(acked)
    record.refused = refused
    record.unanswered = WRITERS * WRITES - len(acked) - refused  # writers that did not finish
    expected = _expected(d, acked)
    for sub in d.subscribers:
        report = compare(sub.name, "subscription", expected[sub.name], sub.got)
        record.add(report)
        if not report.counts.clean:
            dump_deliveries(d.workdir, report, sub.got, {})
    watchers = Counts()
    repeats: dict[str, list[tuple[str, int]]] = {}
    for name, (got, again) in d.watch_journals().items():
        repeats[name] = [(x.id, x.offset) for x in again]
        report = compare(f"watcher:{name}", "watch", acked, got)
        record.add(report)
        watchers += report.counts
        if not report.counts.clean:
            dump_deliveries(d.workdir, report, got, {})
    reasons: Counter[str] = Counter()
    for actor in d.actors:
        reasons.update(x.rsplit(":", 1)[-1] for x in actor.recovery_failed)
    assert d.watchdog is not None
    record.hung = list(d.watchdog.hung)
    record.extra.update(
        {
            "watchers": watchers.to_json(),
            "subscriptions": {
                k: v - watchers.to_json()[k] for k, v in record.totals.to_json().items()
            },
            "recovery_failed": dict(reasons),
            # The tail of a killed watcher's last life, handed out again at the head of the
            # next (allowed: at least once for the last batch).
            "watcher_repeats_after_kill": repeats,
            "reconnections": sum(max(0, a.client.stats.connections - 1) for a in d.actors),
        }
    )


# -- the scenarios --------------------------------------------------------------------------------
@pytest.mark.slow
async def test_control_no_fault(faults_cassandra: CassandraNode, workdir: Path) -> None:
    """No fault: the harness itself must count zero lost, duplicated, out of order."""
    await run_changes("control", faults_cassandra, workdir, None)


@pytest.mark.slow
async def test_server_sigterm(faults_cassandra: CassandraNode, workdir: Path) -> None:
    await run_changes("server_sigterm", faults_cassandra, workdir, terminate_server(1))


@pytest.mark.slow
async def test_server_kill9(faults_cassandra: CassandraNode, workdir: Path) -> None:
    await run_changes(
        "server_kill9", faults_cassandra, workdir, kill_server(1), repeats_allowed=True
    )


@pytest.mark.slow
async def test_redis_restarted_empty(faults_cassandra: CassandraNode, workdir: Path) -> None:
    await run_changes("redis_restarted_empty", faults_cassandra, workdir, redis_restart_empty)

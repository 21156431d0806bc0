"""Cassandra's own CDC as a change source, on a real node started WITH CDC (the shared test
node is not): the agent beside it (trio_rt/cdc/agent), `CdcSource` storing its changes in the
streams, writes made by another process with plain cassandra-driver (tests/cassandra/cdc_writer.py).

The node runs with 1 MiB commit-log segments and ``cdc_total_space: 8MiB``, so segments fill,
complete and must be deleted all the time, and a consumer that stops consuming blocks writes
within seconds. The node restart test runs last in this module (it stops and starts the
agent).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_rt import MemorySequencer, WebSocketManager
from trio_rt._engine.changes import ChangeEvent, ChangeStreamManager
from trio_rt._engine.streams import StreamEntry
from trio_rt.cassandra import (
    CassandraSession,
    CassandraStreamStore,
    CassandraTimeout,
    Cdc,
    CdcSource,
    Database,
    OutboxClaims,
    Table,
)
from trio_rt.cdc import AgentBatch, CdcAgent, CdcChange
from trio_rt.testing.services import CassandraServer, ServiceError

from ..conftest import Client, client, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SEGMENT_SIZE = 1 << 20
CDC_TOTAL_SPACE = 8 << 20
#: The agent's flags here (and again after `agent_with`). cdc_raw also links the live
#: segments (up to commitlog_total_space, half of cdc_total_space here): at the default
#: --alert-fraction 0.5 they alone kept the alert on.
AGENT_OPTIONS = {"poll-ms": "5", "alert-fraction": "0.75"}


@pytest.fixture(scope="module")
def cdc_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CassandraServer]:
    try:
        node = CassandraServer.start(
            tmp_path_factory.mktemp("cdc"),
            die_with_parent=True,
            # Above the default 768m: this node takes sustained write loads (and its own
            # consumer's writes) with 1 MiB segments flushed all the time.
            heap="1g",
            cdc_agent=True,
            cdc_agent_options=AGENT_OPTIONS,
            extra_yaml=(
                "commitlog_segment_size: 1MiB\ncdc_total_space: 8MiB\n"
                # Cassandra counts a segment against cdc_total_space until its memtables are
                # flushed, whatever cdc_raw holds: flush early so that 8 MiB is about cdc_raw.
                "commitlog_total_space: 4MiB\n"
            ),
        )
    except ServiceError as exc:
        pytest.fail(f"could not start a CDC node: {exc}")
    yield node
    # A node that died or stopped serving keeps its directory (logs, hs_err) for whoever
    # reads the failure.
    node.stop(remove_dir=node.alive() and node.ping())


@pytest.fixture(autouse=True)
def node_survives(cdc_node: CassandraServer) -> Iterator[None]:
    """After each test the node must still serve: if it died or stopped its transports
    (a commit-log failure stops them), say so with what its log said, not only with the
    next test's connection errors."""
    yield
    if cdc_node.alive() and cdc_node.ping():
        return
    log_path = cdc_node.process.log_path
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError as exc:
        lines = [f"(cannot read {log_path}: {exc})"]
    notable: list[str] = []
    for line in lines:
        if line.startswith(("ERROR", "WARN")) or "Exception" in line or "OutOfMemory" in line:
            notable.append(line[:400])
        elif line.startswith("\tat ") and notable and len(notable[-1]) < 4000:
            notable[-1] += "\n" + line[:200]  # an error's stack, its first frames

    crashes = sorted(str(p) for p in log_path.parent.glob("hs_err_pid*.log"))
    state = "is alive but does not answer CQL" if cdc_node.alive() else "died"
    pytest.fail(
        f"the CDC node {state} (log {log_path}, JVM crash files {crashes or 'none'});"
        " its last warnings and errors:\n" + "\n".join(notable[-40:] or lines[-40:])
    )


def agent(node: CassandraServer) -> CdcAgent:
    assert node.cdc_agent is not None
    return node.cdc_agent


@pytest.fixture
async def cdc_session(cdc_node: CassandraServer) -> AsyncIterator[CassandraSession]:
    async with CassandraSession.connect([cdc_node.host], port=cdc_node.port) as session:
        yield session


def posts(*, full_rows: bool = False) -> Table:
    return Table(
        "posts",
        {"id": "int", "author": "text", "title": "text", "score": "int", "tags": "set<text>"},
        partition_key="id",
        capture_full_rows=full_rows,
    )


def load_table() -> Table:
    return Table("load", {"id": "int", "body": "text"}, partition_key="id")


async def create(session: CassandraSession, keyspace: str, table: Table) -> None:
    columns = ", ".join(f"{c.name} {c.cql_type}" for c in table.columns.values())
    await session.execute(
        f"CREATE TABLE {keyspace}.{table.name} ({columns}, PRIMARY KEY ({table.partition_key[0]}))"
        " WITH cdc = true"
    )


@pytest.fixture
async def keyspace(cdc_session: CassandraSession, cdc_node: CassandraServer) -> AsyncIterator[str]:
    name = "cdc_" + uuid.uuid4().hex[:10]
    await cdc_session.create_keyspace(name)
    store = CassandraStreamStore(cdc_session, name)
    await store.create_schema()
    await CdcSource(
        cdc_session, name, agents=[], tables=[], store=store, sequencer=MemorySequencer()
    ).create_schema()
    # Never dropped (the node goes at the end of the module): a DROP racing this node's
    # commit-log allocator, which flushes all the time with commitlog_total_space 4MiB, can
    # hit "Unknown CF <id>" there, and commit_failure_policy: stop then stops the node's
    # transports (seen in CI and here, once in a few runs of this module).
    yield name


def source(
    session: CassandraSession, keyspace: str, node: CassandraServer, *tables: Table
) -> CdcSource:
    return CdcSource(
        session,
        keyspace,
        agents=[f"{agent(node).host}:{agent(node).port}"],
        tables=tables,
        store=CassandraStreamStore(session, keyspace),
        sequencer=MemorySequencer(),
    )


async def agentless_source(
    session: CassandraSession, keyspace: str, **options: Any
) -> tuple[CassandraStreamStore, CdcSource]:
    """The posts table (created) and a `CdcSource` of it with no agent: the test hands it
    batches through `ingest`. `options` go to `CdcSource`."""
    table = posts()
    await create(session, keyspace, table)
    store = CassandraStreamStore(session, keyspace)
    cdc = CdcSource(
        session,
        keyspace,
        agents=[],
        tables=[table],
        store=store,
        sequencer=MemorySequencer(),
        **options,
    )
    return store, cdc


async def write(node: CassandraServer, keyspace: str, *statements: str) -> None:
    """Runs the statements in another process (plain cassandra-driver), one after the other."""
    result = await trio.run_process(
        [
            sys.executable,
            "-m",
            "tests.cassandra.cdc_writer",
            f"{node.host}:{node.port}",
            keyspace,
            "statements",
        ],
        stdin="\n".join(statements).encode(),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]


async def entries(store: CassandraStreamStore, table: str, count: int) -> list[StreamEntry]:
    """The first entries of ``table:<table>`` once there are at least `count` of them."""
    stream = f"table:{table}"
    with trio.fail_after(120):  # a deadlock guard, not a timing assertion
        while True:
            head = await store.head(stream)
            if head is not None and head.position.offset >= count:
                found = await store.read(stream, head.position.epoch, 0, 100_000)
                if len(found) >= count:
                    return found
            await trio.sleep(0.05)


def events(found: list[StreamEntry]) -> list[dict[str, Any]]:
    import json

    return [json.loads(e.payload) for e in found]


GUARD = 120.0  # deadlock protection only


@dataclasses.dataclass
class Served:
    """A server whose ChangeStreamManager reads CDC: a WebSocket client subscribed to the
    table, a named watcher on it."""

    changes: ChangeStreamManager
    client: Client
    watched: list[ChangeEvent]
    subscribed: dict[str, Any]
    received: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    async def until(self, predicate: Any) -> None:
        """Receive data_updates (into `received`) until `predicate(event)` holds for one,
        and until the watcher has seen as many changes."""
        with trio.fail_after(GUARD):
            while not self.received or not predicate(self.received[-1]["event"]):
                message = await self.client.recv(GUARD)
                assert message["type"] == "data_update", message
                self.received.append(message)
        await wait_until(
            lambda: len(self.watched) >= len(self.received), GUARD, explain=self.difference
        )

    def difference(self) -> str:
        """What the subscriber and the watcher got differently (for a failure)."""
        sent = [m["event"]["position"]["offset"] for m in self.received]
        seen = [e.position.offset for e in self.watched]
        twice = sorted({o for o in sent if sent.count(o) > 1})
        return (
            f"the subscriber got {len(sent)} changes, the watcher {len(seen)}; offsets the"
            f" subscriber got twice: {twice[:20]}; only the subscriber: "
            f"{sorted(set(sent) - set(seen))[:20]}; only the watcher: "
            f"{sorted(set(seen) - set(sent))[:20]}; last 5: {sent[-5:]} / {seen[-5:]};"
            f" cdc {self.changes.cdc.stats if self.changes.cdc else None};"
            f" changes {self.changes.stats}"
        )

    def delivered(self) -> list[dict[str, Any]]:
        """What the subscriber got, after checking the watcher got the same, in order."""
        sent = [m["event"] for m in self.received]
        assert [e.to_json() for e in self.watched] == sent
        offsets = [e["position"]["offset"] for e in sent]
        assert offsets == sorted(set(offsets)), "out of order or twice"
        return sent


@contextlib.asynccontextmanager
async def serving(
    session: CassandraSession,
    keyspace: str,
    node: CassandraServer,
    table: Table,
    *,
    watcher: str = "w",
    outbox: bool = False,
    since: dict[str, Any] | None = None,
    single_reporter: bool = False,
    watched_before: int = 0,
) -> AsyncIterator[Served]:
    """Serve `table` with a watcher; connect a client and subscribe it (with `since`), once
    the watcher has seen `watched_before` changes."""
    db = Database(session, keyspace)
    manager = WebSocketManager(host="127.0.0.1", port=0, heartbeat_interval=None)
    changes = ChangeStreamManager(
        db,
        manager,
        tables=[table],
        source=Cdc(
            agents=[f"{agent(node).host}:{agent(node).port}"],
            outbox=outbox,
            single_reporter=single_reporter,
        ),
    )
    await changes.create_schema()
    watched: list[ChangeEvent] = []

    async def record(event: ChangeEvent) -> None:
        watched.append(event)
        await trio.lowlevel.checkpoint()

    async with manager:
        await changes.watch(table, callback=record, name=watcher)
        await wait_until(lambda: len(watched) >= watched_before, GUARD)
        async with client(manager) as c:
            subscribe: dict[str, Any] = {"type": "subscribe", "table": table.name}
            if since is not None:
                subscribe["since"] = since
            await c.send(subscribe)
            # With `since`, the changes the server replays come before its reply
            # (docs/protocol.md); the tail may have read some of them already.
            replayed: list[dict[str, Any]] = []
            with trio.fail_after(GUARD):
                while (reply := await c.recv(GUARD))["type"] == "data_update":
                    replayed.append(reply)
            assert reply["type"] == "subscribed", reply
            assert since is not None or not replayed, replayed
            assert changes.cdc is not None
            await changes.cdc.wait_connected()
            yield Served(changes, c, watched, reply, replayed)


async def test_writes_from_another_process_reach_a_subscriber_and_a_watcher_once_in_order(
    cdc_session: CassandraSession, keyspace: str, cdc_node: CassandraServer
) -> None:
    table = posts()
    await create(cdc_session, keyspace, table)
    await cdc_session.execute(f"CREATE TABLE {keyspace}.other (id int PRIMARY KEY, v text)")
    async with serving(cdc_session, keyspace, cdc_node, table) as served:
        await write(
            cdc_node,
            keyspace,
            "INSERT INTO posts (id, author, title, score) VALUES (1, 'ann', 'one', 1)",
            "UPDATE posts SET title = 'uno', tags = tags + {'a'} WHERE id = 1",
            "INSERT INTO posts (id, author, title, score) VALUES (2, 'bob', 'two', 2) "
            "USING TTL 3600",
            "DELETE FROM posts WHERE id = 1",
            "INSERT INTO other (id, v) VALUES (1, 'not captured')",
            "BEGIN BATCH "
            "INSERT INTO posts (id, author, title, score) VALUES (3, 'cy', 'three', 3); "
            "INSERT INTO posts (id, author, title, score) VALUES (4, 'di', 'four', 4); "
            "APPLY BATCH",
            "UPDATE posts SET score = 5 WHERE id = 2",
            "INSERT INTO posts (id, title) VALUES (99, 'the last one')",
        )
        # Everything before the last write came before it, once: nothing is still to come.
        await served.until(lambda event: event["key"] == {"id": 99})
        found = served.delivered()
        cdc = served.changes.cdc
        assert cdc is not None
    head = [(e["operation"], e["key"], e["data"]) for e in found]
    assert len(found) == 8
    assert head[:4] == [
        ("insert", {"id": 1}, {"id": 1, "author": "ann", "title": "one", "score": 1}),
        ("update", {"id": 1}, {"id": 1, "title": "uno"}),
        ("insert", {"id": 2}, {"id": 2, "author": "bob", "title": "two", "score": 2}),
        ("delete", {"id": 1}, {"id": 1}),
    ]
    # A batch's partitions are separate mutations: both come, in the commit log's order.
    assert sorted(e["key"]["id"] for e in found[4:6]) == [3, 4]
    assert head[6] == ("update", {"id": 2}, {"id": 2, "score": 5})
    # What clients do not get, the stream keeps: the TTL, the partial collection, the source.
    stored = events(await entries(cdc.store, "posts", 8))
    assert stored[1]["partial"] == ["tags"]  # the set changed element by element
    assert stored[2]["ttl"] == 3600 and stored[0].get("ttl") is None
    assert all(e["source"] == "cdc" and isinstance(e["ts"], int) for e in stored)
    assert cdc.stats["ignored"] == 0  # `other` has no cdc: the agent does not even send it


async def test_full_rows_are_read_for_updates_of_a_capture_full_rows_table(
    cdc_session: CassandraSession, keyspace: str, cdc_node: CassandraServer
) -> None:
    table = posts(full_rows=True)
    await create(cdc_session, keyspace, table)
    cdc = source(cdc_session, keyspace, cdc_node, table)
    async with trio.open_nursery() as nursery:
        await nursery.start(cdc.run)
        await write(
            cdc_node,
            keyspace,
            "INSERT INTO posts (id, author, title, score, tags) VALUES (1, 'ann', 'one', 1, {'x'})",
            "UPDATE posts SET title = 'uno', tags = tags + {'y'} WHERE id = 1",
        )
        found = events(await entries(cdc.store, "posts", 2))
        nursery.cancel_scope.cancel()
    assert found[1]["operation"] == "update"
    # Read after the write: the whole row, the partially updated set included.
    assert found[1]["data"] == {
        "id": 1,
        "author": "ann",
        "title": "uno",
        "score": 1,
        "tags": ["x", "y"],
    }
    assert cdc.stats["row_reads"] == 1  # the insert wrote every column: no read


def a_batch(keyspace: str, seq: int, *ids: int) -> AgentBatch:
    changes = [
        CdcChange(keyspace, "posts", "insert", {"id": i}, 1_000_000 + i, {"title": f"t{i}"})
        for i in ids
    ]
    return AgentBatch(seq, 1, 100 * seq, changes)


async def test_a_batch_sent_again_or_by_another_replica_is_stored_once(
    cdc_session: CassandraSession, keyspace: str
) -> None:
    remembered: list[tuple[str, StreamEntry]] = []
    store, cdc = await agentless_source(
        cdc_session,
        keyspace,
        remember=lambda stream, got: remembered.extend((stream, e) for e in got),
    )
    await cdc.ingest("node-a", a_batch(keyspace, 1, 1, 2, 3))
    await cdc.ingest("node-a", a_batch(keyspace, 1, 1, 2, 3))  # after an agent restart
    await cdc.ingest("node-b", a_batch(keyspace, 7, 2, 3, 4))  # another replica
    stored = await entries(store, "posts", 4)
    found = events(stored)
    assert [e["key"]["id"] for e in found] == [1, 2, 3, 4]
    assert cdc.stats["stored"] == 4 and cdc.stats["duplicates"] == 5
    # What the local tails are handed is what was stored (each once): they need not read it.
    assert remembered == [("table:posts", e) for e in stored]


async def test_a_single_reporter_reads_claims_and_stores_each_change_once(
    cdc_session: CassandraSession, keyspace: str
) -> None:
    """`single_reporter`: claims are read, not taken. A re-sent batch is a duplicate, a write
    the outbox claimed too, and a change this node claimed without storing it is stored."""
    from trio_rt._engine.streams import Allocation, StreamPosition
    from trio_rt.cassandra._cdc import Claim
    from trio_rt.cdc._wire import change_id

    store, cdc = await agentless_source(cdc_session, keyspace, single_reporter=True)

    def claim(n: int) -> Claim:
        ts = 1_000_000 + n
        return Claim("table:posts", change_id(keyspace, "posts", "write", ts, {"id": n}), ts)

    await cdc.claims.claim_outbox(claim(2), Allocation(StreamPosition(99, "e"), 1))
    assert await cdc.claims.claim(claim(3), "node-a")  # claimed, then the consumer stopped
    await cdc.ingest("node-a", a_batch(keyspace, 1, 1, 2, 3))
    await cdc.ingest("node-a", a_batch(keyspace, 1, 1, 2, 3))  # after an agent restart
    found = events(await entries(store, "posts", 2))
    assert [e["key"]["id"] for e in found] == [1, 3]
    assert cdc.stats["stored"] == 2 and cdc.stats["duplicates"] == 4


class SlowFirstStore:
    """A session whose first entry batch is slow or lost, as a busy node's can be:
    `mode` "times_out": it raises `CassandraTimeout` at once and Cassandra applies it only
    after `release` (its batchlog replaying it); "waits": it is applied, and answered, only
    after `release`. Every other call goes to the real session, and the late one reaches the
    real node too: only the timing is staged, because a real node cannot be made to time
    out one chosen batch (the kill -9 test under load is where it happens for real)."""

    def __init__(self, session: CassandraSession, nursery: trio.Nursery, mode: str) -> None:
        self.session = session
        self.nursery = nursery
        self.mode = mode
        self.sent, self.release = trio.Event(), trio.Event()
        self.calls = 0

    async def execute_batch(self, statements: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls > 1:
            return await self.session.execute_batch(statements, **kwargs)

        applied = trio.Event()

        async def land_late() -> None:  # a request once sent is not withdrawn
            await self.release.wait()
            await self.session.execute_batch(statements, **kwargs)
            applied.set()

        self.nursery.start_soon(land_late)
        self.sent.set()
        if self.mode == "waits":
            await applied.wait()  # a caller cancelled here abandons the request
            return []
        raise CassandraTimeout("Write timeout (test): the batchlog has it")


async def stream_ids(store: CassandraStreamStore) -> list[int]:
    head = await store.head("table:posts")
    assert head is not None
    found = await store.read("table:posts", head.position.epoch, 0, 10)
    return [json.loads(e.payload)["key"]["id"] for e in found]


@pytest.mark.parametrize("single_reporter", [False, True])
async def test_a_store_that_timed_out_and_lands_late_is_no_duplicate(
    cdc_session: CassandraSession,
    keyspace: str,
    single_reporter: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An entry batch times out (so the batch fails, with no retries left) and Cassandra
    applies it after the re-sent batch was stored again. The re-send writes the same entry
    row (the position of the first attempt), so the late write lands on it: one entry."""
    import trio_rt.cassandra._cdc

    monkeypatch.setattr(trio_rt.cassandra._cdc, "STORE_RETRY_FOR", 0.0)
    # Where the late write lands is the point here, not the window: a busy machine's slow
    # claim before the re-send must not take it past the 2 s.
    monkeypatch.setattr(trio_rt.cassandra._cdc, "REUSE_POSITION_FOR", 60.0)
    store, cdc = await agentless_source(cdc_session, keyspace, single_reporter=single_reporter)
    async with trio.open_nursery() as late:
        cdc.session = slow = SlowFirstStore(cdc_session, late, "times_out")  # type: ignore[assignment]
        with pytest.raises(CassandraTimeout):
            await cdc.ingest("node-a", a_batch(keyspace, 1, 1))  # the connection drops
        await cdc.ingest("node-a", a_batch(keyspace, 1, 1))  # sent again
        slow.release.set()
    assert await stream_ids(store) == [1]


async def test_a_store_that_timed_out_is_written_again_at_once(
    cdc_session: CassandraSession, keyspace: str
) -> None:
    """Within `STORE_RETRY_FOR` a timed-out entry batch is written again, unchanged: the
    change is stored now, not when Cassandra's batchlog replays it, and once."""
    store, cdc = await agentless_source(cdc_session, keyspace)
    async with trio.open_nursery() as late:
        cdc.session = slow = SlowFirstStore(cdc_session, late, "times_out")  # type: ignore[assignment]
        await cdc.ingest("node-a", a_batch(keyspace, 1, 1))
        assert await stream_ids(store) == [1]
        slow.release.set()
    assert await stream_ids(store) == [1]
    assert cdc.stats["store_retries"] == 1 and slow.calls == 2


async def test_a_store_in_flight_when_the_connection_drops_is_seen_through(
    cdc_session: CassandraSession, keyspace: str
) -> None:
    """Cancelling the batch (the agent connection dropped) while its entries are being
    written waits for that request: the entries are stored and the readers woken before the
    cancellation ends the batch, so a re-send finds them (a duplicate), and nothing lands
    after the readers may have skipped the positions."""
    woken: list[tuple[str, int]] = []
    store, cdc = await agentless_source(cdc_session, keyspace)
    cdc.notify = lambda stream, offset: woken.append((stream, offset))
    async with trio.open_nursery() as late:
        cdc.session = slow = SlowFirstStore(cdc_session, late, "waits")  # type: ignore[assignment]
        async with trio.open_nursery() as connection:
            connection.start_soon(cdc.ingest, "node-a", a_batch(keyspace, 1, 1))
            await slow.sent.wait()
            connection.cancel_scope.cancel()  # the connection drops
            slow.release.set()
    assert woken == [("table:posts", 1)]
    assert await stream_ids(store) == [1]
    await cdc.ingest("node-a", a_batch(keyspace, 1, 1))  # sent again
    assert cdc.stats["duplicates"] == 1 and await stream_ids(store) == [1]


async def test_a_claimed_change_that_was_not_stored_is_stored_when_sent_again(
    cdc_session: CassandraSession, keyspace: str
) -> None:
    """A consumer stopped between the claim and the write: the same node's re-send stores it
    (the claim is the node's and has no position); another node's copy does not."""
    store, cdc = await agentless_source(cdc_session, keyspace)
    from trio_rt.cassandra._cdc import Claim
    from trio_rt.cdc._wire import change_id

    ident = change_id(keyspace, "posts", "write", 1_000_001, {"id": 1})
    assert await cdc.claims.claim(Claim("table:posts", ident, 1_000_001), "node-a")
    await cdc.ingest("node-b", a_batch(keyspace, 1, 1))
    assert cdc.stats["stored"] == 0
    await cdc.ingest("node-a", a_batch(keyspace, 1, 1))
    assert [e["key"]["id"] for e in events(await entries(store, "posts", 1))] == [1]


@pytest.mark.parametrize("single_reporter", [False, True])
async def test_a_write_through_the_outbox_is_not_delivered_again_by_cdc(
    cdc_session: CassandraSession, keyspace: str, cdc_node: CassandraServer, single_reporter: bool
) -> None:
    from trio_rt import ChangeLog

    table = posts()
    await create(cdc_session, keyspace, table)
    cdc = source(cdc_session, keyspace, cdc_node, table)
    cdc.single_reporter = single_reporter
    db = Database(cdc_session, keyspace)
    db.capture = OutboxClaims(ChangeLog(cdc.store, cdc.sequencer), cdc.claims, cdc.cdc_tables)
    async with trio.open_nursery() as nursery:
        await nursery.start(cdc.run)
        await db.insert(table, {"id": 1, "author": "ann", "title": "outbox", "score": 1})
        await write(cdc_node, keyspace, "INSERT INTO posts (id, title) VALUES (2, 'cqlsh')")
        found = events(await entries(cdc.store, "posts", 2))
        await trio.sleep(0.5)
        assert len(events(await entries(cdc.store, "posts", 2))) == 2
        nursery.cancel_scope.cancel()
    assert [(e["key"]["id"], e.get("source")) for e in found] == [(1, None), (2, "cdc")]
    assert cdc.stats["duplicates"] == 1  # CDC saw the outbox's write, claimed already


async def test_a_publisher_write_to_a_table_cdc_records_too_is_delivered_once(
    cdc_session: CassandraSession, keyspace: str, cdc_node: CassandraServer
) -> None:
    """A worker's `ChangePublisher` with ``cdc_tables``: its write is claimed for the outbox
    before it is sent, so CDC's report of it is a duplicate."""
    from trio_rt import ChangePublisher, MemoryBroker

    table = posts()
    await create(cdc_session, keyspace, table)
    cdc = source(cdc_session, keyspace, cdc_node, table)
    worker_db = Database(cdc_session, keyspace)
    publisher = ChangePublisher(
        worker_db,
        broker=MemoryBroker(),
        sequencer=cdc.sequencer,
        store=cdc.store,
        cdc_tables=[table],
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(cdc.run)
        await nursery.start(publisher.run)
        await cdc.wait_connected()
        await worker_db.insert(table, {"id": 1, "author": "job", "title": "worker", "score": 1})
        await write(cdc_node, keyspace, "INSERT INTO posts (id, title) VALUES (2, 'cqlsh')")
        found = events(await entries(cdc.store, "posts", 2))
        with trio.fail_after(GUARD):  # CDC has seen the worker's write too
            while cdc.stats["changes"] < 2:  # noqa: ASYNC110
                await trio.sleep(0.05)
        found = events(await entries(cdc.store, "posts", 2))
        nursery.cancel_scope.cancel()
    assert [(e["key"]["id"], e.get("source")) for e in found] == [(1, None), (2, "cdc")]
    assert cdc.stats["duplicates"] == 1


async def test_the_demo_board_shows_a_row_inserted_by_a_plain_driver(
    cdc_session: CassandraSession, keyspace: str, cdc_node: CassandraServer
) -> None:
    """``trio-rt demo --cassandra HOST:PORT --cdc-agent HOST:PORT``: the page's own post
    (outbox) and a row another client inserts (CDC) reach the board, each once."""
    from trio_rt_examples import chat

    manager = chat.build_app(
        cassandra=f"{cdc_node.host}:{cdc_node.port}",
        keyspace=keyspace,
        cdc_agent=f"{agent(cdc_node).host}:{agent(cdc_node).port}",
        host="127.0.0.1",
        port=0,
        heartbeat_interval=None,
    )
    async with manager, client(manager, "/?user=ann") as ann:
        sub = await ann.request({"type": "subscribe", "table": "posts"}, GUARD)
        assert sub["type"] == "subscribed", sub
        await ann.send({"type": "new_post", "title": "from the page"})
        first = await ann.recv(GUARD)
        await write(
            cdc_node,
            keyspace,
            "INSERT INTO posts (id, author, title) VALUES (now(), 'cqlsh', 'from cqlsh')",
        )
        second = await ann.recv(GUARD)
    assert [(m["type"], m["event"]["operation"]) for m in (first, second)] == [
        ("data_update", "insert")
    ] * 2
    assert (first["event"]["data"]["author"], first["event"]["data"]["title"]) == (
        "ann",
        "from the page",
    )
    assert (second["event"]["data"]["author"], second["event"]["data"]["title"]) == (
        "cqlsh",
        "from cqlsh",
    )


async def test_a_write_right_after_its_table_is_created_is_not_lost(
    cdc_session: CassandraSession, keyspace: str, cdc_node: CassandraServer
) -> None:
    """The agent reads a mutation of a table created after it loaded the schema (before its
    periodic look at system_schema): it reloads the schema instead of skipping the change as
    one of a dropped table."""
    table = posts()
    cdc = source(cdc_session, keyspace, cdc_node, table)
    async with trio.open_nursery() as nursery:
        await nursery.start(cdc.run)
        await cdc.wait_connected()
        await create(cdc_session, keyspace, table)
        await cdc_session.execute(f"INSERT INTO {keyspace}.posts (id, title) VALUES (1, 'first')")
        found = events(await entries(cdc.store, "posts", 1))
        nursery.cancel_scope.cancel()
    assert [(e["key"], e["data"]) for e in found] == [({"id": 1}, {"id": 1, "title": "first"})]


@dataclasses.dataclass(frozen=True)
class Loaded:
    """What `load` reports: rows written, writes that failed, refusals by Cassandra because
    cdc_raw was full (retried with ``retry_refused``), and the writer's stderr, which says
    why each failed write failed."""

    count: int
    failed: int
    refused: int
    errors: str


async def load(
    node: CassandraServer,
    keyspace: str,
    count: int,
    rate: float,
    size: int,
    concurrency: int = 1,
    retry_refused: bool = False,
) -> Loaded:
    """Inserts rows 0 .. count-1 from another process; with `concurrency` 1 each write waits
    for the previous one (so the stream must have them in that order)."""
    endpoint = f"{node.host}:{node.port}"
    argv = [sys.executable, "-m", "tests.cassandra.cdc_writer", endpoint, keyspace, "load"]
    argv += ["--count", str(count), "--rate", str(rate), "--size", str(size)]
    argv += ["--concurrency", str(concurrency)] + ["--retry-refused"] * retry_refused
    result = await trio.run_process(
        argv, capture_stdout=True, capture_stderr=True, check=False, cwd=ROOT
    )
    errors = result.stderr.decode(errors="replace")
    assert result.returncode == 0, errors[-3000:]
    words = result.stdout.decode().split()  # done N failed F refused R
    assert words[::2] == ["done", "failed", "refused"], result.stdout
    return Loaded(int(words[1]), int(words[3]), int(words[5]), errors[-3000:])


async def explain_missing(
    session: CassandraSession, keyspace: str, store: CassandraStreamStore, found: list[Any]
) -> str:
    """For rows of ``load`` that `found` (events) lacks: their claim (owner, position) and
    what the stream holds there (for a failure's message)."""
    from trio_rt.cdc._wire import change_id

    got = {e["key"]["id"] for e in found}
    rows = await session.execute(f"SELECT id, WRITETIME(body) AS ts FROM {keyspace}.load")
    missing = sorted((r["id"], r["ts"]) for r in rows if r["id"] not in got)
    head = await store.head("table:load")
    epoch = head.position.epoch if head is not None else ""
    stored = {e.position.offset: e for e in await store.read("table:load", epoch, 0, 100_000)}
    lines = [f"{len(missing)} row(s) missing; stream head {head}, {len(stored)} entries"]
    for row_id, ts in missing[:12]:
        ident = change_id(keyspace, "load", "write", ts, {"id": row_id})
        claims = await session.execute(
            f"SELECT owner, pos, epoch FROM {keyspace}.trio_rt_cdc_claims"
            " WHERE stream = ? AND bucket = ? AND change = ?",
            ("table:load", ts // 10_000_000, ident),
        )
        claim = dict(claims[0]) if claims else None
        entry = stored.get(claim["pos"]) if claim and claim.get("pos") is not None else None
        held = json.loads(entry.payload)["key"] if entry is not None else None
        lines.append(f"id {row_id} ts {ts}: claim {claim}, entry there: {held}")
    return "\n".join(lines)


def assert_each_once_in_order(
    found: list[dict[str, Any]], count: int, ordered: bool = True
) -> None:
    ids = [e["key"]["id"] for e in found]
    assert len(ids) == len(set(ids)), "a change was stored twice"
    assert sorted(ids) == list(range(count)), "a change is missing"
    if ordered:
        assert ids == list(range(count))


@pytest.mark.parametrize(
    ("single_reporter", "trailing_file"),
    [(False, False), (True, False), (True, True)],
    ids=["claims", "single_reporter", "single_reporter-trailing_checkpoint_file"],
)
async def test_kill_9_of_the_agent_loses_and_repeats_nothing(
    cdc_session: CassandraSession,
    keyspace: str,
    cdc_node: CassandraServer,
    single_reporter: bool,
    trailing_file: bool,
) -> None:
    """With ``trailing_file`` the agent writes its checkpoint file only when a segment is
    finished (``--checkpoint-ms`` of ten minutes): a kill -9 then sends again all that was
    acknowledged since, which the consumer must recognize and store none of again."""
    table = load_table()
    await create(cdc_session, keyspace, table)
    killed = []
    async with contextlib.AsyncExitStack() as stack:
        if trailing_file:
            await stack.enter_async_context(agent_with(cdc_node, {"checkpoint-ms": "600000"}))
        served = await stack.enter_async_context(
            serving(cdc_session, keyspace, cdc_node, table, single_reporter=single_reporter)
        )
        cdc = served.changes.cdc
        assert cdc is not None

        count = 1200  # 8 s at 150/s: an agent restart (~2-4 s) fits twice

        # Kill at absolute counts: after a restart the backlog comes in one rush, and a
        # count relative to it could be past the end of the load (a test that then waited
        # forever for changes that were all stored).
        async def killer() -> None:
            for at in (count // 8, count // 2):
                await wait_until(
                    lambda at=at: cdc.stats["stored"] >= at,
                    limit=60,
                    explain=lambda at=at: (
                        f"{at} stored, after {len(killed)} kill(s): {cdc.stats},"
                        f" {cdc.agent_stats}\n{agent(cdc_node).log_tail(40)}"
                    ),
                )
                # (None: it was between runs, e.g. exiting for a schema change: again.)
                while (pid := agent(cdc_node).kill()) is None:
                    await trio.sleep(0.1)
                    await trio.to_thread.run_sync(agent(cdc_node).wait_ready)
                killed.append(pid)
                await trio.to_thread.run_sync(agent(cdc_node).wait_ready)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(killer)
            loaded = await load(cdc_node, keyspace, count, 150, 50, retry_refused=True)
            assert loaded.failed == 0, loaded.errors
        # The last row: everything before it came before it (each write waited for the one
        # before), so nothing is still to come.
        await served.until(lambda event: event["key"] == {"id": count - 1})
        found = served.delivered()
        if len({e["key"]["id"] for e in found}) != count:
            print(await explain_missing(cdc_session, keyspace, cdc.store, found))
            print(cdc.stats)
    assert len(killed) == 2 and all(killed)
    assert_each_once_in_order(found, count)


@pytest.mark.parametrize("crash", ["consumer", "agent"])
async def test_a_single_reporter_without_outbox_claims_checks_only_re_sent_batches(
    cdc_session: CassandraSession, keyspace: str, cdc_node: CassandraServer, crash: str
) -> None:
    """``single_reporter`` and no outbox claims: batches never sent before are stored without
    reading claims. A batch stored and not acknowledged when the consumer stops (or when the
    agent is killed with SIGKILL) is sent again: the next consumer checks it (the agent's
    ``resend_until`` covers it) and stores none of it again."""
    table, probe = load_table(), posts()
    await create(cdc_session, keyspace, table)
    await create(cdc_session, keyspace, probe)
    store = CassandraStreamStore(cdc_session, keyspace)
    sequencer = MemorySequencer()
    consumers: list[CdcSource] = []
    ready = trio.Event()

    async def consume(stop_after: int | None) -> None:
        cdc = CdcSource(
            cdc_session,
            keyspace,
            agents=[f"{agent(cdc_node).host}:{agent(cdc_node).port}"],
            tables=[table, probe],
            store=store,
            sequencer=sequencer,
            single_reporter=True,
            outbox_claims=False,
        )
        consumers.append(cdc)
        with trio.CancelScope() as scope:

            def stored(stream: str, offset: int) -> None:
                # Called once a batch is stored, before it is acknowledged.
                if stream == "table:posts":
                    ready.set()  # the agent runs with both tables' schema
                elif stop_after is not None and offset >= stop_after and not scope.cancel_called:
                    if crash == "agent":
                        assert agent(cdc_node).kill()
                    scope.cancel()

            cdc.notify = stored
            await cdc.run()
            await trio.sleep_forever()

    async def consumers_one_after_the_other() -> None:
        await consume(stop_after=50)
        if crash == "agent":
            await trio.to_thread.run_sync(agent(cdc_node).wait_ready)
        else:
            # A restarted process takes seconds; what the stopped one had sent is applied
            # within Cassandra's 2 s write timeout by then (docs/cdc.md, "Guarantees"). A
            # restart faster than that may store such a batch twice: documented, not tested.
            await trio.sleep(2.5)
        await consume(stop_after=None)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumers_one_after_the_other)
        await write(cdc_node, keyspace, "INSERT INTO posts (id, title) VALUES (1, 'probe')")
        await ready.wait()
        loaded = await load(cdc_node, keyspace, 300, 150, 50, retry_refused=True)
        assert loaded.failed == 0, loaded.errors
        found = events(await entries(store, "load", 300))
        nursery.cancel_scope.cancel()
    assert_each_once_in_order(found, 300)
    first, second = consumers
    assert first.stats["claim_free_batches"] > 0
    # The batch stored and not acknowledged came again, and was a duplicate.
    assert second.stats["duplicates"] > 0


@contextlib.asynccontextmanager
async def agent_with(node: CassandraServer, options: dict[str, str]) -> AsyncIterator[CdcAgent]:
    """The node's agent replaced by one started with `options` (same state, same port),
    then the usual one again."""
    old = agent(node)
    await trio.to_thread.run_sync(old.wait_ready)
    old.stop()
    lib = Path(old.argv[old.argv.index("-cp") + 1].split(":")[1].rstrip("*"))

    def start(extra: dict[str, str]) -> CdcAgent:
        return CdcAgent.start(
            lib,
            node.dir / "cassandra.yaml",
            old.state_dir,
            port=old.port,
            options={**AGENT_OPTIONS, **extra},
        )

    node.cdc_agent = await trio.to_thread.run_sync(start, options)
    try:
        yield node.cdc_agent
    finally:
        node.cdc_agent.stop()
        node.cdc_agent = await trio.to_thread.run_sync(start, {})


async def test_the_agent_reads_when_cdc_raw_changes_not_at_its_next_poll(
    cdc_session: CassandraSession, keyspace: str, cdc_node: CassandraServer
) -> None:
    """The agent watches cdc_raw (inotify): a write is read once Cassandra rewrites its idx
    file, not at the next poll. Here the polls are ten minutes apart (``--fallback-poll-ms``)
    and every write still comes, one after the other (with ``--watch off`` they would wait
    for the poll: this test fails then)."""
    table = posts()
    await create(cdc_session, keyspace, table)
    async with agent_with(cdc_node, {"fallback-poll-ms": "600000"}):
        cdc = source(cdc_session, keyspace, cdc_node, table)
        async with trio.open_nursery() as nursery:
            await nursery.start(cdc.run)
            await cdc.wait_connected()
            for n in range(1, 4):
                await write(cdc_node, keyspace, f"INSERT INTO posts (id, title) VALUES ({n}, 'w')")
                found = events(await entries(cdc.store, "posts", n))
            nursery.cancel_scope.cancel()
    assert [e["key"]["id"] for e in found] == [1, 2, 3]


async def test_other_tables_writes_cost_no_batch_of_their_own(
    cdc_session: CassandraSession, keyspace: str, cdc_node: CassandraServer
) -> None:
    """The commit log is shared: writes to tables without CDC move the idx files too. What
    the agent passes of them only moves the checkpoint, and waits for the next batch with
    changes (or ``--progress-ms``, here ten minutes): 200 such writes and then a change come
    without a batch of their own (without the wait: one per commit-log sync)."""
    table = posts()
    await create(cdc_session, keyspace, table)
    await cdc_session.execute(f"CREATE TABLE {keyspace}.plain (id int PRIMARY KEY, body text)")
    async with agent_with(cdc_node, {"progress-ms": "600000"}):
        cdc = source(cdc_session, keyspace, cdc_node, table)
        async with trio.open_nursery() as nursery:
            await nursery.start(cdc.run)
            await cdc.wait_connected()
            batches: list[tuple[list[int], dict[str, float]]] = []
            cdc.profile = batches  # each batch's changes (write timestamps)
            plain = [f"INSERT INTO plain (id, body) VALUES ({n}, 'x')" for n in range(200)]
            await write(cdc_node, keyspace, *plain, "INSERT INTO posts (id, title) VALUES (1, 'a')")
            found = events(await entries(cdc.store, "posts", 1))
            nursery.cancel_scope.cancel()
    assert [e["key"]["id"] for e in found] == [1]
    assert [stamps for stamps, _ in batches if not stamps] == []


async def test_a_mutation_the_agent_cannot_decode_is_skipped_counted_and_alerted(
    cdc_session: CassandraSession, keyspace: str, cdc_node: CassandraServer
) -> None:
    """A mutation the agent cannot decode with an unchanged schema (a bug, a type it does
    not know; injected here with ``--fail-decode``) is skipped and counted, with an ERROR in
    the agent's log and a metric: the changes after it still come (the agent used to exit
    and read it again, forever)."""
    from trio_rt._engine.metrics_prometheus import _cdc_metrics

    table, bad = posts(), load_table()
    await create(cdc_session, keyspace, table)
    await create(cdc_session, keyspace, bad)
    async with agent_with(cdc_node, {"fail-decode": f"{keyspace}.load"}) as failing:
        cdc = source(cdc_session, keyspace, cdc_node, table, bad)
        async with trio.open_nursery() as nursery:
            await nursery.start(cdc.run)
            await write(
                cdc_node,
                keyspace,
                "INSERT INTO posts (id, title) VALUES (1, 'before')",
                "INSERT INTO load (id, body) VALUES (1, 'undecodable')",
                "INSERT INTO posts (id, title) VALUES (2, 'after')",
            )
            found = events(await entries(cdc.store, "posts", 2))
            name = f"{failing.host}:{failing.port}"
            with trio.fail_after(GUARD):  # stats come about once a second
                while (stats := cdc.agent_stats.get(name)) is None or not (  # noqa: ASYNC110
                    stats.skipped_undecodable
                ):
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        assert [e["key"]["id"] for e in found] == [1, 2]
        assert stats.skipped_undecodable == 1
        assert "cannot decode the mutation" in failing.log_path.read_text()
        (skipped, _alert) = list(_cdc_metrics("s", cdc))
        values = {s.labels["reason"]: s.value for s in skipped.samples}
        assert values["undecodable"] == 1


async def test_the_agent_keeps_its_segment_open_between_reads(
    cdc_session: CassandraSession, keyspace: str, cdc_node: CassandraServer
) -> None:
    """Writes made one at a time, each stored before the next is sent, make one read of the
    agent each, all in the same few segments: the agent opens each segment once and resumes
    at its last sync marker (it used to open the segment, read its header and list cdc_raw
    on every read, ~25 % of a core at 200 writes/s), and every change still comes, once,
    in order."""
    table = load_table()
    await create(cdc_session, keyspace, table)
    count = 40
    cdc = source(cdc_session, keyspace, cdc_node, table)
    name = f"{agent(cdc_node).host}:{agent(cdc_node).port}"

    async def next_stats(after: Any = None) -> Any:
        """The agent's next stats message (about one a second), after `after`."""
        with trio.fail_after(GUARD):
            while (stats := cdc.agent_stats.get(name)) is None or stats is after:  # noqa: ASYNC110
                await trio.sleep(0.05)
        return stats

    async with trio.open_nursery() as nursery:
        await nursery.start(cdc.run)
        await cdc.wait_connected()
        # The agent restarts once after the CREATE TABLE (a schema change): settle first.
        await write(cdc_node, keyspace, "INSERT INTO load (id, body) VALUES (-1, 'settle')")
        await entries(cdc.store, "load", 1)
        insert = f"INSERT INTO {keyspace}.load (id, body) VALUES (?, ?)"
        written = 0
        for _ in range(3):
            restarts = agent(cdc_node).restarts
            before = await next_stats(await next_stats())
            for n in range(written, written + count):
                stored = cdc.stats["stored"]
                await cdc_session.execute(insert, (n, f"row {n}"))
                with trio.fail_after(GUARD):
                    while cdc.stats["stored"] == stored:  # noqa: ASYNC110
                        await trio.sleep(0.005)
            written += count
            after = await next_stats(await next_stats())
            if agent(cdc_node).restarts == restarts:
                break
            # The agent restarted meanwhile, and its counters with it: a compaction of
            # system_schema changes the files it watches as a schema change does. Again.
        else:
            pytest.fail("the agent restarted during each of 3 measurements")
        found = events(await entries(cdc.store, "load", written + 1))
        nursery.cancel_scope.cancel()
    assert [e["key"]["id"] for e in found] == list(range(-1, written))
    reads = after.reads - before.reads
    assert reads >= count, "the agent restarted, or read several writes at once"
    # The segments the checkpoint moved through (ids count up), each opened once.
    spanned = after.checkpoint["segment"] - before.checkpoint["segment"] + 1
    assert after.segment_opens - before.segment_opens <= spanned


async def test_cdc_raw_stays_bounded_under_a_sustained_write_load(
    cdc_session: CassandraSession, keyspace: str, cdc_node: CassandraServer
) -> None:
    """Far more commit log than ``cdc_total_space`` (8 MiB) passes through cdc_raw; without
    the agent deleting what was consumed, writes to the table would be rejected for good
    part way (the next test). cdc_raw holds whole segments, the entries this test's consumer
    writes included, so it fills faster than the rows alone.

    The writer writes again what Cassandra refuses (``CDCWriteFailure``, not applied), as an
    application should: on a machine this busy the consumer can fall a few seconds behind,
    and Cassandra may refuse writes until it catches up (the clean-clone CI saw 31 of 3,000
    once). A refusal that lasts fails the load (the writer's ``--refusal-limit``), and every
    row must reach the stream exactly once."""
    table = load_table()
    await create(cdc_session, keyspace, table)
    cdc = source(cdc_session, keyspace, cdc_node, table)
    cdc_raw = cdc_node.dir / "cdc_raw"
    largest = 0
    seen: set[str] = set()
    count, size = 3000, 3000  # ~20 MiB of commit log (the entries repeat the rows)
    async with trio.open_nursery() as nursery:
        await nursery.start(cdc.run)
        await cdc.wait_connected()

        async def watch() -> None:
            nonlocal largest
            while True:
                files = list(cdc_raw.iterdir())
                used = 0
                for path in files:
                    with contextlib.suppress(FileNotFoundError):
                        used += path.stat().st_size
                largest = max(largest, used)
                seen.update(p.name for p in files if p.suffix == ".log")
                await trio.sleep(0.1)

        nursery.start_soon(watch)
        # 100/s: what the consumer sustains on these machines (docs/cdc.md "What it costs").
        loaded = await load(
            cdc_node, keyspace, count, 100, size, concurrency=16, retry_refused=True
        )
        assert loaded.failed == 0, loaded.errors
        print(f"{loaded.refused} refusals (cdc_raw full), each written again")
        found = events(await entries(cdc.store, "load", count))
        nursery.cancel_scope.cancel()
    # Written 16 at a time: the commit log's order is not the ids' order.
    assert_each_once_in_order(found, count, ordered=False)
    assert len(seen) * SEGMENT_SIZE > 2 * CDC_TOTAL_SPACE
    assert largest <= CDC_TOTAL_SPACE + 2 * SEGMENT_SIZE


async def test_without_a_consumer_cdc_raw_fills_and_writes_are_rejected_then_resume(
    cdc_session: CassandraSession, keyspace: str, cdc_node: CassandraServer
) -> None:
    """What the deletion guards against (and the alert warns about): nobody consumes, the
    segments stay, Cassandra rejects writes to CDC tables; a consumer makes room again."""
    table = load_table()
    await create(cdc_session, keyspace, table)
    cdc = source(cdc_session, keyspace, cdc_node, table)

    def logged(text: str) -> int:
        return agent(cdc_node).log_path.read_text(errors="replace").count(text)

    alerts, back = logged("cdc_raw holds"), logged("cdc_raw is back under")
    loaded = await load(cdc_node, keyspace, 6000, 2000, 2000, concurrency=16)
    assert loaded.refused > 0, loaded.errors  # refused: cdc_raw full
    # The agent checks cdc_raw every second, consumer or not, and warns in its log. (A
    # consumer's view of the alert can miss it: once connected, it may consume enough
    # before the next stats message to end the alert.)
    with trio.fail_after(60):
        while logged("cdc_raw holds") == alerts:  # noqa: ASYNC110
            await trio.sleep(0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(cdc.run)
        await cdc.wait_connected()
        await entries(cdc.store, "load", 6000 - loaded.failed)
        # Room again: the next writes are accepted.
        await write(cdc_node, keyspace, "INSERT INTO load (id, body) VALUES (100000, 'after')")
        name = f"{agent(cdc_node).host}:{agent(cdc_node).port}"

        def cleared() -> bool:
            stats = cdc.agent_stats.get(name)
            return stats is not None and not stats.alert

        await wait_until(
            cleared,
            limit=60,
            explain=lambda: (
                f"the alert ended: {cdc.agent_stats}\n{cdc_raw_listing(cdc_node)}\n"
                + agent(cdc_node).log_tail(30)
            ),
        )
        assert logged("cdc_raw is back under") > back
        nursery.cancel_scope.cancel()


def cdc_raw_listing(node: CassandraServer) -> str:
    """cdc_raw's files, sizes and idx contents (for a failure's message)."""
    lines = []
    for path in sorted((node.dir / "cdc_raw").iterdir()):
        with contextlib.suppress(OSError):
            idx = path.read_text().replace("\n", " ") if path.suffix == ".idx" else ""
            lines.append(f"{path.name} {path.stat().st_size} {path.stat().st_nlink} {idx}")
    return "\n".join(lines)


async def test_a_restart_of_the_node_loses_and_repeats_nothing(
    cdc_session: CassandraSession, keyspace: str, cdc_node: CassandraServer
) -> None:
    """Changes written while the agent and the server are down, the node killed with SIGKILL
    (it replays its commit log) and restarted, more changes: the named watcher resumes and
    the subscriber recovers with ``since``; each gets every change once, in order."""
    table = load_table()
    await create(cdc_session, keyspace, table)
    statements = [f"INSERT INTO load (id, body) VALUES ({i}, 'b')" for i in range(41)]
    async with serving(cdc_session, keyspace, cdc_node, table) as served:
        await write(cdc_node, keyspace, statements[0])
        await served.until(lambda event: event["key"] == {"id": 0})
        assert [e["key"]["id"] for e in served.delivered()] == [0]
        since = served.received[-1]["event"]["position"]
    old = agent(cdc_node)
    await trio.to_thread.run_sync(old.wait_ready)
    old.stop()
    await write(cdc_node, keyspace, *statements[1:21])
    # Past the periodic 2 ms commit-log sync, with room for a busy disk (kill -9 loses what
    # it has not synced; nothing to wait on shows when it has).
    await trio.sleep(1.0)
    await trio.to_thread.run_sync(lambda: cdc_node.restart(kill=True))
    await write(cdc_node, keyspace, *statements[21:])
    lib = Path(old.argv[old.argv.index("-cp") + 1].split(":")[1].rstrip("*"))
    cdc_node.cdc_agent = await trio.to_thread.run_sync(
        lambda: CdcAgent.start(
            lib,
            cdc_node.dir / "cassandra.yaml",
            old.state_dir,
            port=old.port,
            options={"poll-ms": "5"},
        )
    )
    async with (
        CassandraSession.connect([cdc_node.host], port=cdc_node.port) as session,
        # The server has read at least half the changes when the subscriber asks: those are
        # replayed before its reply (the race stop 24's CI run lost to), the rest come live.
        serving(session, keyspace, cdc_node, table, since=since, watched_before=20) as served,
    ):
        await served.until(lambda event: event["key"] == {"id": 40})
        found = served.delivered()
        assert served.subscribed["recovered"] is True
    assert [e["key"]["id"] for e in found] == list(range(1, 41))


def test_the_agent_jar_is_built_for_the_node_version() -> None:
    import zipfile

    from trio_rt.cdc import ensure_agent_jar

    jar = ensure_agent_jar()
    assert "trio_rt/cdc/agent/Agent.class" in zipfile.ZipFile(jar).namelist()
    assert (jar.parent / "logback.xml").is_file()

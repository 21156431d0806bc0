"""The application under test of the fault-injection suite, built only from the public API.

Everything the suite runs in its own processes is here, so an API change means editing this
module (and the client-side calls in ``harness.py``), not the scenarios:

- ``build_rooms``: a chat server (``python -m trio_rt serve tests.faults.app:build_rooms``):
  `RedisBroker`, `RoomHistory` on `CassandraStreamStore` with a `RedisSequencer`. App message
  ``{"type": "say", "room": R, "id": ID}`` broadcasts ``{"type": "m", "msg": ID}`` to room
  R and answers ``{"type": "said", "id": ID, "position": ...}`` once `broadcast_to_room`
  returned; any failure answers an ``error`` with the same ``id`` (the dispatcher's rule):
  the sender knows the message was refused. The broadcast carries the id as ``msg``, not
  ``id``: ``id`` is the protocol's request id, and the Python client applies its duplicate
  rule only to room messages without one.
- ``build_changes``: a server exposing the table ``items`` to client subscriptions
  (`ChangeStreamManager`), with a named watcher that appends every change it is handed to
  ``$FAULTS_WATCH_DIR/watch-<server name>.jsonl`` (one JSON line, flushed: a ``kill -9``
  loses nothing written before it).
- ``python -m tests.faults.app write``: a writer process inserting rows into ``items``
  through the captured `Database`; each insert that returned is appended to its ack file as
  ``A <id>``, each that raised as ``R <id> <error>``.
- ``create_schema``: the keyspace's tables, created by the test before any process starts.

Configuration comes from the environment (``FAULTS_*``, see `Config`), because the CLI's
factory only receives the server options.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import trio

from trio_rt import (
    ChangeStreamManager,
    Connection,
    HttpResponse,
    RoomHistory,
    WebSocketManager,
)
from trio_rt.cassandra import CassandraSession, CassandraStreamStore, Database, Table
from trio_rt.testing.services import parse_cassandra_endpoint

if TYPE_CHECKING:
    from trio_rt import ChangeEvent, Watch

# RedisBroker and RedisSequencer are imported where the server and writer processes build
# them: importing them patches asyncio (trio-asyncio), which the test process does not need.

ITEMS = Table(
    "items",
    {"id": "text", "writer": "text", "seq": "int", "category": "text", "score": "int"},
    partition_key="id",
)
CATEGORIES = ("c0", "c1", "c2", "c3")


def item_row(writer: int, seq: int) -> dict[str, Any]:
    """The row writer `writer` inserts as its `seq`-th write (the harness recomputes it to
    know which subscriber filters match an acknowledged id)."""
    return {
        "id": f"w{writer}-{seq:05d}",
        "writer": f"w{writer}",
        "seq": seq,
        "category": CATEGORIES[(seq + writer) % len(CATEGORIES)],
        "score": (seq * 37 + writer * 11) % 100,
    }


@dataclass(frozen=True)
class Config:
    """Where the services are; one namespace per test (Redis keys and broker channels)."""

    redis_url: str
    cassandra: str
    keyspace: str
    namespace: str
    server_name: str
    watch_dir: Path | None

    @classmethod
    def from_env(cls) -> Config:
        env = os.environ
        watch_dir = env.get("FAULTS_WATCH_DIR")
        return cls(
            redis_url=env["FAULTS_REDIS_URL"],
            cassandra=env["FAULTS_CASSANDRA"],
            keyspace=env["FAULTS_KEYSPACE"],
            namespace=env.get("FAULTS_NAMESPACE", "faults"),
            server_name=env.get("FAULTS_SERVER_NAME", "server"),
            watch_dir=Path(watch_dir) if watch_dir else None,
        )

    def environ(self) -> dict[str, str]:
        """The variables a child process needs to rebuild this configuration."""
        values = {
            "FAULTS_REDIS_URL": self.redis_url,
            "FAULTS_CASSANDRA": self.cassandra,
            "FAULTS_KEYSPACE": self.keyspace,
            "FAULTS_NAMESPACE": self.namespace,
            "FAULTS_SERVER_NAME": self.server_name,
        }
        if self.watch_dir is not None:
            values["FAULTS_WATCH_DIR"] = str(self.watch_dir)
        return values


def add_stats_route(manager: WebSocketManager, extra: Callable[[], dict[str, Any]]) -> None:
    """``GET /faults/stats``: the server's counters (and the component's), which the harness
    reads from every live server at the end of a scenario (diagnostics, not assertions)."""

    @manager.route("/faults/stats")
    def stats(request: object) -> HttpResponse:
        data: dict[str, Any] = dataclasses.asdict(manager.stats)
        broker_stats = getattr(manager.broker, "stats", None)
        if broker_stats is not None and dataclasses.is_dataclass(broker_stats):
            data["broker"] = dataclasses.asdict(broker_stats)  # type: ignore[arg-type]
        data.update(extra())
        return HttpResponse.json(200, data)


def server_options(config: Config, options: dict[str, Any]) -> dict[str, Any]:
    """What an operator of this deployment would set: no per-user message budget (senders run
    at 12 msg/s), a heartbeat that finds dead clients within seconds."""
    options.setdefault("rate_limit", None)
    options.setdefault("heartbeat_interval", 5.0)
    options.setdefault("channel_prefix", config.namespace)
    options.setdefault("server_id", config.server_name)
    return options


@contextlib.asynccontextmanager
async def cassandra_session(config: Config) -> AsyncIterator[CassandraSession]:
    endpoint = parse_cassandra_endpoint(config.cassandra)
    async with CassandraSession.connect([endpoint.host], port=endpoint.port) as session:
        yield session


async def open_session_for(manager_services: list[Any], config: Config) -> CassandraSession:
    """A session that lives as long as the server: opened now (the stores need it at
    construction), closed by a service when the server's services stop."""
    stack = contextlib.AsyncExitStack()
    session = await stack.enter_async_context(cassandra_session(config))

    async def close_session(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED):
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await stack.aclose()

    manager_services.append(close_session)
    return session


# -- rooms ----------------------------------------------------------------------------------------
async def build_rooms(**options: Any) -> WebSocketManager:
    """The rooms server (``python -m trio_rt serve tests.faults.app:build_rooms``)."""
    from trio_rt import RedisBroker, RedisSequencer

    config = Config.from_env()
    services: list[Any] = []
    session = await open_session_for(services, config)
    # RoomHistory's defaults (reorder_window 0.2 s...): what docs/streams.md promises.
    # FAULTS_REORDER_WINDOW=<seconds> in the test's environment tries another window.
    window = os.environ.get("FAULTS_REORDER_WINDOW")
    history = RoomHistory(
        CassandraStreamStore(session, config.keyspace),
        RedisSequencer(config.redis_url, namespace=config.namespace),
        **({"reorder_window": float(window)} if window else {}),
    )
    manager = WebSocketManager(
        broker=RedisBroker(config.redis_url),
        history=history,
        **server_options(config, options),
    )
    for service in services:
        manager.add_service(service)
    add_stats_route(manager, dict)

    @manager.on_message("say")
    async def say(conn: Connection, message: dict[str, Any]) -> None:
        message_id = str(message["id"])
        position = await manager.broadcast_to_room(
            str(message["room"]), {"type": "m", "msg": message_id}
        )
        reply: dict[str, Any] = {"type": "said", "id": message_id}
        if position is not None:
            reply["position"] = position.to_json()
        await conn.send(reply)

    return manager


# -- change streams -------------------------------------------------------------------------------
async def create_schema(session: CassandraSession, keyspace: str) -> None:
    """Every table of the keyspace: room history, change streams, watcher positions, items."""
    from trio_rt.cassandra import create_schema as create_trio_rt_schema

    await create_trio_rt_schema(session, keyspace, tables=[ITEMS])


def open_journal(path: Path) -> IO[str]:
    """An append-only file for the watcher's record (lives as long as the process)."""
    return open(path, "a")


async def build_changes(**options: Any) -> WebSocketManager:
    """A server with table subscriptions and one named watcher
    (``python -m trio_rt serve tests.faults.app:build_changes``)."""
    from trio_rt import RedisBroker, RedisSequencer

    config = Config.from_env()
    services: list[Any] = []
    session = await open_session_for(services, config)
    manager = WebSocketManager(
        broker=RedisBroker(config.redis_url), **server_options(config, options)
    )
    for service in services:
        manager.add_service(service)
    changes = ChangeStreamManager(
        Database(session, config.keyspace),
        manager,
        store=CassandraStreamStore(session, config.keyspace),
        sequencer=RedisSequencer(config.redis_url, namespace=config.namespace),
        tables=[ITEMS],
    )
    add_stats_route(manager, lambda: {"changes": dict(changes.stats)})
    if config.watch_dir is not None:
        journal = open_journal(config.watch_dir / f"watch-{config.server_name}.jsonl")
        # A new life of the server (the harness tells repeats after a kill -9 from duplicates).
        # On a line of its own even after a torn last line of the previous life.
        journal.write("\n" + json.dumps({"life": os.getpid()}) + "\n")
        journal.flush()
        watches: list[Watch] = []

        async def record(event: ChangeEvent) -> None:
            # The checkpoint first: a stop can cancel the callback only before its effect, as
            # an app's callback must (one cut short is called again after the restart).
            await trio.lowlevel.checkpoint()
            # Written and flushed before the watcher moves on: what the app was handed is on
            # disk even if the process is killed right after. `saved`: what a restart resumes
            # at or past.
            line: dict[str, Any] = {"id": event.data.get("id"), "op": event.operation}
            line["position"] = event.position.to_json()
            saved = watches[0].saved if watches else None
            line["saved"] = saved.to_json() if saved is not None else None
            journal.write(json.dumps(line) + "\n")
            journal.flush()

        watches.append(
            await changes.watch(ITEMS, callback=record, name=f"faults:{config.server_name}")
        )
    return manager


@contextlib.asynccontextmanager
async def open_writer(config: Config) -> AsyncIterator[Database]:
    """A `Database` whose writes are captured and announced to the servers: a write-only
    process with a `ChangePublisher` (no WebSocketManager)."""
    from trio_rt import ChangePublisher, RedisBroker, RedisSequencer

    async with cassandra_session(config) as session:
        db = Database(session, config.keyspace)
        publisher = ChangePublisher(
            db,
            broker=RedisBroker(config.redis_url),
            sequencer=RedisSequencer(config.redis_url, namespace=config.namespace),
            store=CassandraStreamStore(session, config.keyspace),
            channel_prefix=config.namespace,  # the servers' (server_options): nudges reach them
        )
        async with publisher:
            yield db


async def write(writer: int, count: int, rate: float, acks: Path) -> None:
    """Insert `count` rows at `rate` per second once the harness says go (a line on stdin);
    every outcome is appended to `acks` (and flushed) as it happens."""
    config = Config.from_env()
    with open(acks, "a") as out:  # noqa: ASYNC230 - a tiny local file, flushed per line
        async with open_writer(config) as db:
            print("ready", flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)
            start = trio.current_time()
            for seq in range(count):
                row = item_row(writer, seq)
                try:
                    await db.insert(ITEMS, row)
                except Exception as exc:
                    out.write(f"R {row['id']} {type(exc).__name__}\n")
                else:
                    out.write(f"A {row['id']}\n")
                out.flush()
                # Paced from the start: a writer that was held up catches up, as a queue would.
                await trio.sleep_until(start + (seq + 1) / rate)
        print("done", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.app")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="a writer process (see write())")
    w.add_argument("--writer", type=int, required=True)
    w.add_argument("--count", type=int, required=True)
    w.add_argument("--rate", type=float, required=True)
    w.add_argument("--acks", type=Path, required=True)
    args = parser.parse_args(argv)
    trio.run(write, args.writer, args.count, args.rate, args.acks)


if __name__ == "__main__":
    main()

"""The demo's live posts board: a Cassandra table whose changes reach every page at once.

With ``trio-rt demo --cassandra HOST:PORT`` (or ``build_app(cassandra="HOST:PORT")``) the demo
connects to Cassandra, creates the keyspace ``trio_rt_demo`` and a ``posts`` table, and runs a
`ChangeStreamManager`: the page subscribes to ``posts`` with the built-in ``subscribe``
message, and a ``new_post`` message (``{"type": "new_post", "title": "..."}``) inserts a row
through the captured `Database`, which every subscriber receives as a ``data_update``.

With a CDC agent too (``trio-rt demo --cassandra HOST:PORT --cdc-agent HOST:PORT``, or
``build_app(..., cdc_agent="HOST:PORT")``; docs/cdc.md) the table is altered ``WITH cdc =
true`` and the manager reads both sources (``Cdc(agents=[...], outbox=True)``): a row inserted
with cqlsh or any other client appears on the board too, e.g.
``INSERT INTO trio_rt_demo.posts (id, author, title) VALUES (now(), 'cqlsh', 'hi');``.
"""

from __future__ import annotations

import uuid
from typing import Any

import trio

from trio_rt import ChangeStreamManager, Connection, ErrorCode, ProtocolError, WebSocketManager
from trio_rt.cassandra import CassandraSession, Cdc, ChangeSource, Database, Outbox, Table
from trio_rt.testing.services import parse_cassandra_endpoint

MAX_TITLE = 200

posts = Table(
    "posts",
    {"id": "timeuuid", "author": "text", "title": "text"},
    partition_key="id",
)


def add_posts_board(
    manager: WebSocketManager, cassandra: str, keyspace: str, *, cdc_agent: str | None = None
) -> None:
    """Connect to Cassandra when `manager` starts serving, expose `posts` to subscriptions,
    and handle ``new_post``. The session lives in the manager's nursery (a service) and is
    closed when the server stops. `cdc_agent` (``HOST:PORT`` of the node's CDC agent; the
    node needs ``cdc_enabled: true``): every client's inserts reach the board, not only
    ``new_post``'s."""
    state: dict[str, Database] = {}
    endpoint = parse_cassandra_endpoint(cassandra)
    source: ChangeSource = Outbox() if cdc_agent is None else Cdc(agents=[cdc_agent], outbox=True)

    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with CassandraSession.connect([endpoint.host], port=endpoint.port) as session:
            await session.create_keyspace(keyspace)
            db = Database(session, keyspace)
            await db.create_table(posts)
            if cdc_agent is not None:
                await session.execute(f"ALTER TABLE {keyspace}.posts WITH cdc = true")
            changes = ChangeStreamManager(db, manager, tables=[posts], source=source)
            await changes.create_schema()
            state["db"] = db
            task_status.started()
            await trio.sleep_forever()

    manager.add_service(run)

    @manager.on_message("new_post")
    async def new_post(conn: Connection, message: dict[str, Any]) -> None:
        title = message.get("title")
        if not isinstance(title, str) or not title.strip():
            raise ProtocolError(ErrorCode.INVALID_FIELD, "'title' must be a non-empty string")
        if len(title) > MAX_TITLE:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"'title' is over {MAX_TITLE} characters")
        row = {"id": uuid.uuid1(), "author": conn.user_id or "guest", "title": title.strip()}
        await state["db"].insert(posts, row)

"""Capability section "Database Change Notifications", in trio_rt (needs Cassandra).

Writes made through `Database` are captured with their position in the same logged batch;
`ChangeStreamManager.watch` hands every change to a server-side callback, and clients
subscribe to tables themselves with the built-in ``subscribe`` message (filters, permission
check, recovery). `posts` is defined with ``capture_full_rows=True``, so an insert, an update
and a delete all reach the post's category room. Run by tests/integration/test_examples.py and
tests/engine/test_change_streams.py against the test Cassandra.
"""

from __future__ import annotations

from trio_rt import ChangeEvent, ChangeStreamManager, Connection, WebSocketManager
from trio_rt.cassandra import CassandraSession, Database, Table

posts = Table(
    "posts",
    {"id": "uuid", "category": "text", "author": "text", "title": "text", "score": "int"},
    partition_key="id",
    # Every change carries the row: an update the whole row after it, a delete the last
    # known row. So updates and deletes reach the category room too, and subscribers'
    # filters apply to the row (one read before an update or delete that does not set
    # every column; docs/streams.md, "Whole rows").
    capture_full_rows=True,
)
user_notifications = Table(
    "user_notifications",
    {"user_id": "text", "id": "timeuuid", "text": "text"},
    partition_key="user_id",
    clustering_key="id",
)


async def may_read(conn: Connection, table: str, action: str) -> bool:
    """The TypeScript original's hasPermission(user, table, 'read'): here, signed-in users read
    posts."""
    return conn.user_id is not None and table == "posts" and action == "read"


async def build(
    session: CassandraSession, keyspace: str
) -> tuple[WebSocketManager, ChangeStreamManager, Database]:
    manager = WebSocketManager(port=0)
    db = Database(session, keyspace)
    for table in (posts, user_notifications):
        await db.create_table(table)
    change_stream = ChangeStreamManager(db, manager, tables=[posts], has_permission=may_read)
    await change_stream.create_schema()

    @manager.on_connection
    async def identify(conn: Connection) -> None:
        users = conn.request.query.get("user")  # a real app verifies a JWT here
        conn.user_id = users[0] if users else None

    async def notify_category(change: ChangeEvent) -> None:
        # Notify everyone in the post's category room (the row's category: after an update,
        # the row as it now is; for a delete, the row as it was).
        category = change.data.get("category")
        if category:
            await manager.broadcast_to_room(
                f"category:{category}",
                {"type": "post_update", "operation": change.operation, "data": change.data},
            )

    async def notify_user(change: ChangeEvent) -> None:
        await manager.broadcast_to_room(
            f"user:{change.data['user_id']}", {"type": "notification", "data": change.data}
        )

    await change_stream.watch(
        posts, operations=["insert", "update", "delete"], callback=notify_category
    )
    await change_stream.watch(user_notifications, operations=["insert"], callback=notify_user)
    return manager, change_stream, db

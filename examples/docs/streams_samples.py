"""The sample of docs/streams.md ("The parts"), run by tests/integration/test_doc_samples.py against
a real Cassandra: room history and persistent rooms in Cassandra, and change streams for a table."""

from __future__ import annotations

from trio_rt_examples.capabilities.change_streams import may_read, posts

from trio_rt import (
    ChangeStreamManager,
    Connection,
    MemorySequencer,
    RoomHistory,
    WebSocketManager,
)
from trio_rt.cassandra import CassandraRoomStore, CassandraSession, CassandraStreamStore, Database


async def build(
    session: CassandraSession, keyspace: str, port: int = 3001
) -> tuple[WebSocketManager, ChangeStreamManager, Database]:
    """A server whose rooms keep their history in Cassandra and whose clients may subscribe to
    the `posts` table (signed-in users: ``?user=``)."""
    # --8<-- [start:wiring]
    store = CassandraStreamStore(session, keyspace)  # shared by every server
    sequencer = MemorySequencer()  # one writing process; RedisSequencer(url) for several
    room_store = CassandraRoomStore(session, keyspace)  # persistent rooms' settings
    for schema in (store, room_store):
        await schema.create_schema()  # CREATE TABLE IF NOT EXISTS

    manager = WebSocketManager(
        port=port, history=RoomHistory(store, sequencer), room_store=room_store
    )
    db = Database(session, keyspace)  # writes through db are captured
    changes = ChangeStreamManager(
        db, manager, store=store, sequencer=sequencer, tables=[posts], has_permission=may_read
    )
    # --8<-- [end:wiring]
    await db.create_table(posts)

    @manager.on_connection
    async def identify(conn: Connection) -> None:
        conn.user_id = conn.request.query.get("user", [None])[0]

    return manager, changes, db

"""The samples of docs/cassandra.md, run by tests/integration/test_doc_samples.py against a real
Cassandra."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

# --8<-- [start:imports]
import trio

from trio_rt.cassandra import (
    CapturedWrite,
    CassandraQueryError,
    CassandraSession,
    Change,
    Database,
    Table,
)

# --8<-- [end:imports]


# --8<-- [start:session]
async def main(contact_points: Sequence[str] = ("127.0.0.1",), port: int = 9042) -> dict[str, Any]:
    async with CassandraSession.connect(contact_points, port=port) as session:  # ["127.0.0.1"]
        await session.create_keyspace("app")  # SimpleStrategy, RF 1
        await session.execute(
            "CREATE TABLE IF NOT EXISTS app.users (id int PRIMARY KEY, name text)"
        )
        await session.execute("INSERT INTO app.users (id, name) VALUES (?, ?)", (1, "ada"))
        rows = await session.execute("SELECT id, name FROM app.users WHERE id = :id", {"id": 1})
        # rows == [{"id": 1, "name": "ada"}]
        await session.execute_many(
            "INSERT INTO app.users (id, name) VALUES (?, ?)",
            ((i, f"user {i}") for i in range(2, 1002)),
            concurrency=64,
        )
        names = []
        async for row in session.iterate("SELECT id, name FROM app.users", page_size=100):
            names.append(row["name"])  # a page of 100 rows at a time
        try:
            await session.execute("SELECT nickname FROM app.users")
        except CassandraQueryError as exc:  # refused as written: retrying will not help
            print("refused:", exc)
        with trio.fail_after(2):  # a Trio deadline
            [count] = await session.execute("SELECT count(*) FROM app.users")
    return {"rows": rows, "names": names, "count": count}


# --8<-- [end:session]


# --8<-- [start:table]
posts = Table(
    "posts",
    {"author": "text", "id": "timeuuid", "title": "text", "score": "int", "tags": "set<text>"},
    partition_key=["author"],  # a single column may be given as a string
    clustering_key=["id"],
    clustering_order={"id": "DESC"},
    default_ttl=None,  # seconds; table option default_time_to_live
)
# --8<-- [end:table]


async def model_tour(session: CassandraSession, keyspace: str = "app") -> dict[str, Any]:
    """Write and read `posts` through `Database`; returns what it read."""
    since = uuid.uuid1()  # the posts written below come after this one
    # --8<-- [start:database]
    db = Database(session, keyspace)  # the keyspace must exist
    await db.create_table(posts)  # CREATE TABLE IF NOT EXISTS
    id_ = uuid.uuid1()
    await db.insert(posts, {"author": "ann", "id": id_, "title": "hi"}, ttl=None)
    await db.update(posts, {"author": "ann", "id": id_}, {"score": 3, "title": None})
    row = await db.get(posts, {"author": "ann", "id": id_})  # dict or None
    async for post in db.query(
        posts, {"author": "ann"}, where={"id": {"gt": since}}, order="asc", limit=50
    ):
        print(post["id"], post["score"])
    await db.delete(posts, {"author": "ann", "id": id_})
    # --8<-- [end:database]
    gone = await db.get(posts, {"author": "ann", "id": id_})
    return {"row": row, "gone": gone}


# --8<-- [start:capture]
class AuditLog:  # a ChangeCapture: Database(session, keyspace, capture=AuditLog(keyspace))
    """Writes one audit row per change, in the same logged batch as the change."""

    def __init__(self, keyspace: str) -> None:
        self.insert = f"INSERT INTO {keyspace}.audit (id, change) VALUES (?, ?)"
        self.outcomes: list[tuple[str, str]] = []

    async def prepare(self, change: Change) -> CapturedWrite:
        # change.table; change.operation: "insert" | "update" | "delete"; change.key: the
        # primary key's columns -> values; change.data: an insert's row as written, an
        # update's key + changed columns, a delete's key.
        audit_id = uuid.uuid1()
        return CapturedWrite(
            timestamp=time.time_ns() // 1000,  # µs; the whole batch is written USING it
            statements=[(self.insert, (audit_id, f"{change.operation} {change.table}"))],
            token=audit_id,  # opaque; handed back to committed() or failed()
        )

    def committed(self, change: Change, write: CapturedWrite) -> None:
        self.outcomes.append(("committed", change.operation))

    def failed(self, change: Change, write: CapturedWrite, exc: BaseException) -> None:
        self.outcomes.append(("failed", change.operation))  # the batch MAY still be applied


# --8<-- [end:capture]


# --8<-- [start:run]
if __name__ == "__main__":
    trio.run(main)
# --8<-- [end:run]

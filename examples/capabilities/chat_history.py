"""Capability section "Message Handling" (``ChatMessage.create``), on trio_rt's Cassandra model
layer.

Chat messages go to a ``chat_messages`` table partitioned by (room, day): one partition per
room per UTC day keeps partitions bounded however long a room lives. Rows are clustered by a
timeuuid, newest first, so "the latest n messages" reads the newest partition from its start
and walks back a day at a time::

    async with CassandraSession.connect(["127.0.0.1"]) as session:
        await session.create_keyspace("chat")
        db = Database(session, "chat")
        await ChatMessage.ensure_table(db)
        await ChatMessage.create(db, room="lobby", user_id="ann", text="hi")
        rows = await ChatMessage.latest(db, "lobby", 50)    # newest first
        wire = [ChatMessage.table.to_json(r) for r in rows]  # JSON-safe for a reply

Every value is bound by the model layer (never spliced into CQL); a wrong type raises before
any request is sent (``TypeError: chat_messages.text (text): expected str, got int``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from cassandra.util import uuid_from_time

from trio_rt.cassandra import Database, Table

__all__ = ["ChatMessage"]


class ChatMessage:
    """The ``chat_messages`` table and the two operations the TypeScript original needs."""

    table = Table(
        "chat_messages",
        {
            "room": "text",
            "day": "date",
            "id": "timeuuid",
            "user_id": "text",
            "text": "text",
            "sent_at": "timestamp",
        },
        partition_key=["room", "day"],
        clustering_key=["id"],
        clustering_order={"id": "DESC"},
    )

    @classmethod
    async def ensure_table(cls, db: Database) -> None:
        await db.create_table(cls.table)

    @classmethod
    async def create(
        cls,
        db: Database,
        *,
        room: str,
        user_id: str,
        text: str,
        at: dt.datetime | None = None,
    ) -> dict[str, Any]:
        """Store one message (sent now, or `at`) and return its row."""
        if at is None:
            sent_at = dt.datetime.now(dt.UTC)
        else:  # a naive datetime is taken as UTC, as everywhere in the model layer
            sent_at = at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at.astimezone(dt.UTC)
        row = {
            "room": room,
            "day": sent_at.date(),
            "id": uuid_from_time(sent_at),
            "user_id": user_id,
            "text": text,
            "sent_at": sent_at,
        }
        await db.insert(cls.table, row)
        return {c: cls.table.normalize(c, v) for c, v in row.items()}

    @classmethod
    async def latest(
        cls,
        db: Database,
        room: str,
        n: int = 50,
        *,
        max_days: int = 30,
        today: dt.date | None = None,
    ) -> list[dict[str, Any]]:
        """The `n` newest messages of `room`, newest first, looking back `max_days` days
        (one partition read per day, until `n` rows are found)."""
        if n < 1:
            return []
        day = dt.datetime.now(dt.UTC).date() if today is None else today
        rows: list[dict[str, Any]] = []
        for _ in range(max_days):
            partition = {"room": room, "day": day}
            async for row in db.query(cls.table, partition, limit=n - len(rows)):
                rows.append(row)
            if len(rows) >= n:
                break
            day -= dt.timedelta(days=1)
        return rows

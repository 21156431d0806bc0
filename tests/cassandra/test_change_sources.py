"""`ChangeStreamManager(source=...)`: the choice of outbox, CDC or both, checked when it is
made (no Cassandra needed: nothing here talks to it)."""

from __future__ import annotations

from typing import Any

import pytest

from trio_rt import MemorySequencer, WebSocketManager
from trio_rt._engine.changes import ChangeLog, ChangeStreamManager
from trio_rt._engine.streams import MemoryStreamStore
from trio_rt.cassandra import Cdc, Database, Outbox, OutboxClaims, Table

posts = Table("posts", {"id": "int", "title": "text"}, partition_key="id")
other = Table("other", {"id": "int"}, partition_key="id")


def manager_on(db: Database, **options: Any) -> ChangeStreamManager:
    manager = WebSocketManager(host="127.0.0.1", port=0, heartbeat_interval=None)
    return ChangeStreamManager(
        db,
        manager,
        store=MemoryStreamStore(),  # type: ignore[arg-type]
        sequencer=MemorySequencer(),
        **options,
    )


def a_db() -> Database:
    return Database(object(), "app")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"agents": []}, ValueError, "at least one agent"),
        ({"agents": "127.0.0.1:9044"}, TypeError, "not one string"),
        ({"agents": ["127.0.0.1"]}, ValueError, "host:port"),
        ({"agents": ["h:1"], "tables": ["posts"]}, TypeError, "Table definitions"),
        ({"agents": ["h:1"], "outbox": "yes"}, TypeError, "True or False"),
        ({"agents": ["h:1"], "single_reporter": 1}, TypeError, "True or False"),
        ({"agents": ["h:1"], "concurrency": 0}, ValueError, "concurrency"),
    ],
)
def test_a_bad_cdc_source_is_refused_when_made(
    arguments: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Cdc(**arguments)


def test_the_default_is_the_outbox_and_something_else_is_refused() -> None:
    db = a_db()
    changes = manager_on(db, tables=[posts])
    assert changes.source == Outbox() and changes.cdc is None
    assert isinstance(db.capture, ChangeLog)
    with pytest.raises(TypeError, match=r"Outbox\(\) or Cdc"):
        manager_on(a_db(), source="cdc")


async def test_cdc_alone_captures_nothing_and_follows_the_managers_tables() -> None:
    db = a_db()
    changes = manager_on(db, tables=[posts], source=Cdc(agents=["127.0.0.1:9044"]))
    assert db.capture is None  # its writes come through CDC like everyone else's
    assert changes.cdc is not None and set(changes.cdc.tables) == {"posts"}
    changes.expose(other)
    assert set(changes.cdc.tables) == {"posts", "other"}
    with pytest.raises(ValueError, match="CDC does not record 'nothing'"):
        await changes.watch("nothing", callback=_ignore)
    # A Database that already records its writes would deliver each of them twice.
    captured = a_db()
    captured.capture = ChangeLog(MemoryStreamStore(), MemorySequencer())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not have a capture"):
        manager_on(captured, source=Cdc(agents=["h:1"]))


def test_both_sources_claim_the_outbox_writes_of_the_cdc_tables() -> None:
    db = a_db()
    changes = manager_on(db, tables=[posts, other], source=Cdc(agents=["h:1"], outbox=True))
    assert isinstance(db.capture, OutboxClaims)
    assert set(db.capture.cdc_tables) == {"posts", "other"}
    only = a_db()
    manager_on(only, tables=[posts, other], source=Cdc(agents=["h:1"], tables=[posts], outbox=True))
    assert isinstance(only.capture, OutboxClaims) and set(only.capture.cdc_tables) == {"posts"}
    assert changes.cdc is not None
    captured = a_db()
    captured.capture = ChangeLog(MemoryStreamStore(), MemorySequencer())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="OutboxClaims"):
        manager_on(captured, source=Cdc(agents=["h:1"], outbox=True))


async def _ignore(event: Any) -> None:
    pass

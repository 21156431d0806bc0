"""The sans-IO presence rules (trio_rt/_core/presence_rules.py): info checks, this server's tally,
and the event batches (coalescing, the "resync" overflow policy)."""

from __future__ import annotations

import pytest

from trio_rt._core.presence_rules import (
    EventBatcher,
    LocalTally,
    PresenceTransition,
    check_info,
    user_key,
)


def t(joined: bool, user: str, version: int) -> PresenceTransition:
    return PresenceTransition(joined, f"u:{user}", user, None, version)


def test_info_is_a_small_json_object_or_none() -> None:
    assert check_info(None) is None
    assert check_info({"name": "Ann"}) == {"name": "Ann"}
    with pytest.raises(TypeError, match="dict or None"):
        check_info(["not", "an", "object"])
    with pytest.raises(ValueError, match="JSON"):
        check_info({"x": object()})
    with pytest.raises(ValueError, match="JSON"):
        check_info({"x": float("nan")})
    with pytest.raises(ValueError, match="more than 16"):
        check_info({"name": "x" * 20}, max_bytes=16)


def test_keys_keep_users_and_anonymous_connections_apart() -> None:
    assert user_key("7", "c1") == "u:7"
    assert user_key(None, "c1") == "a:c1"
    assert user_key("a:c1", "c2") != user_key(None, "c1")


def test_the_tally_counts_connections_per_user_and_marks_what_changed() -> None:
    tally = LocalTally()
    assert tally.add("r", "u:a", "a", {"n": 1}) == 1
    assert tally.add("r", "u:a", "a", {"n": 2}) == 2  # the first connection's info stays
    assert tally.dirty
    dirty = tally.take_dirty()
    assert [(u.key, u.connections, u.info) for u in dirty["r"]] == [("u:a", 2, {"n": 1})]
    assert not tally.dirty
    assert tally.remove("r", "u:a") == 1
    assert tally.remove("r", "u:a") == 0
    assert tally.remove("r", "u:a") == 0  # idempotent
    assert [(u.key, u.connections) for u in tally.take_dirty()["r"]] == [("u:a", 0)]
    assert tally.rooms == {}


def test_events_coalesce_per_room_the_last_state_winning() -> None:
    batcher = EventBatcher(max_batch=10)
    batcher.add("r", t(True, "a", 1))
    batcher.add("r", t(False, "a", 2))  # came and went within the window: nothing to say
    batcher.add("r", t(False, "b", 3))
    batcher.add("r", t(True, "b", 4))  # left and came back: nothing to say
    batcher.add("r", t(True, "c", 5))
    batcher.add("q", t(False, "d", 1))
    batches = {b.room: b.to_json() for b in batcher.take()}
    assert batches["r"] == {
        "type": "presence_diff",
        "room": "r",
        "joins": [{"user_id": "c", "info": None, "version": 5}],
        "leaves": [],
        "version": 5,
    }
    assert batches["q"]["leaves"] == [{"user_id": "d", "version": 1}]
    assert not batcher and batcher.take() == []


def test_a_batch_that_overflows_becomes_a_resync() -> None:
    batcher = EventBatcher(max_batch=3)
    for i in range(5):
        batcher.add("r", t(True, f"u{i}", i + 1))
    [batch] = batcher.take()
    assert batch.to_json() == {"type": "presence_diff", "room": "r", "resync": True, "version": 5}
    assert batcher.resyncs == 1


def test_rooms_waiting_are_bounded_and_the_rest_dropped() -> None:
    batcher = EventBatcher(max_batch=3, max_rooms=2)
    for name in ("a", "b", "c"):
        batcher.add(name, t(True, "x", 1))
    assert [b.room for b in batcher.take()] == ["a", "b"]
    assert batcher.dropped == 1

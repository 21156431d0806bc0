"""The client core's acknowledged publishes (sans-IO): a publish is written until answered,
again with the same id on every new connection, first and in order; its ack or error is
consumed and settles the waiting call."""

from __future__ import annotations

from trio_rt.client import ClientClosed, ServerError

from .test_state import Wire


def test_a_publish_is_written_with_its_id_and_the_ack_settles_it() -> None:
    wire = Wire()
    pending = wire.core.publish("r", {"text": "hi"}, "m1")
    assert wire.write() == [{"type": "publish", "room": "r", "data": {"text": "hi"}, "id": "m1"}]
    assert wire.core.unacknowledged == 1 and not pending.waiter.done
    ack = {"type": "ack", "room": "r", "position": {"offset": 3, "epoch": "e"}, "id": "m1"}
    assert wire.reply(dict(ack)) == []  # consumed: the call returns it
    assert pending.waiter.done and not pending.waiter.failed and pending.ack == ack
    assert wire.core.unacknowledged == 0
    # A later message carrying the same id is an ordinary message.
    assert wire.reply({"type": "ack", "id": "m1"}) == [{"type": "ack", "id": "m1"}]


def test_unanswered_publishes_are_written_again_first_and_in_order_after_a_reconnect() -> None:
    wire = Wire()
    first = wire.core.publish("r", 1, "a")
    wire.core.publish("r", 2, "b")
    assert [f["id"] for f in wire.write()] == ["a", "b"]
    wire.reply({"type": "ack", "room": "r", "position": None, "id": "b"})  # b answered
    wire.core.publish("r", 3, "c")  # queued while the connection dies
    wire.core.join("r")
    # The rooms are rejoined first, then a (written, unanswered), then what was queued: c.
    assert [f["type"] for f in wire.reconnect()] == ["join_room"]
    frames = wire.write()
    assert [(f["type"], f.get("id")) for f in frames] == [("publish", "a"), ("publish", "c")]
    assert frames[0] == {"type": "publish", "room": "r", "data": 1, "id": "a"}
    assert wire.stats.resent == 1
    assert wire.write() == []  # each written once per connection
    wire.reply({"type": "ack", "room": "r", "position": None, "id": "a"})
    assert first.waiter.done and not first.waiter.failed
    wire.reconnect()
    assert [f.get("id") for f in wire.write() if f["type"] == "publish"] == ["c"]


def test_an_error_fails_the_publish_and_it_is_not_resent() -> None:
    wire = Wire()
    pending = wire.core.publish("r", 1, "a")
    wire.write()
    err = {"type": "error", "code": "not_in_room", "message": "join", "id": "a"}
    assert wire.reply(err) == []
    assert pending.waiter.failed
    try:
        pending.waiter.check()
    except ServerError as exc:
        assert exc.code == "not_in_room" and exc.room == "r"
    wire.reconnect()
    assert wire.write() == []


def test_a_duplicate_id_is_refused_and_closing_fails_what_waits() -> None:
    wire = Wire()
    pending = wire.core.publish("r", 1, "a")
    try:
        wire.core.publish("r", 2, "a")
        raise AssertionError("a second publish with a waiting id")
    except ValueError:
        pass
    wire.core.close(ClientClosed)
    assert pending.waiter.failed and wire.core.unacknowledged == 0

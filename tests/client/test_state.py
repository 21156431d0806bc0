"""`ClientCore`, the client's sans-IO core: what each server message means for rooms, positions,
subscriptions and requests, and what the client writes next. No sockets, no trio: each test
plays the server's side by hand (`Wire`), so every order of replies is under its control.
tests/client/test_client.py runs the same rules against a real server.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from trio_rt.client import ClientError, ClientStats, ServerError
from trio_rt.client._buffers import ClientOutbox
from trio_rt.client._state import ClientCore, ConnectionBook

Message = dict[str, Any]


class Wire:
    """A core and its current connection, driven the way the I/O side drives them."""

    def __init__(self, *, queue_size: int = 10) -> None:
        self.stats = ClientStats()
        self.changes = 0
        self.core = ClientCore(ClientOutbox(queue_size, "raise", self.stats), self.stats, self.wake)
        self.book = self.core.open_connection(None)

    def wake(self) -> None:
        self.changes += 1

    def write(self) -> list[Message]:
        """Drain the outbox as the writer does; the frames written, decoded."""
        frames = []
        outbox = self.core.outbox
        while outbox:
            item = outbox.pop()
            text = self.core.render(self.book, item)
            if text is not None:
                frames.append(json.loads(text))
            outbox.settle(item, written=text is not None)
        return frames

    def reply(self, message: Message) -> list[Message]:
        """A message from the server; what reaches the app."""
        return self.core.receive(self.book, message)

    def reconnect(self) -> list[Message]:
        """The connection ends and a new one opens; the restore frames, decoded."""
        self.core.connection_ended(self.book)
        self.book = self.core.open_connection(None)
        return [json.loads(frame) for frame in self.core.restore_frames(self.book)]


def at(offset: int, epoch: str = "e") -> dict[str, Any]:
    return {"offset": offset, "epoch": epoch}


def chat(room: str, offset: int, epoch: str = "e", **fields: Any) -> Message:
    return {"type": "chat", "room": room, "position": at(offset, epoch), **fields}


def joined(wire: Wire, room: str, position: dict[str, Any] | None = None) -> None:
    """Join `room` and answer the join."""
    wire.core.join(room)
    (request,) = wire.write()
    reply: Message = {"type": "room_joined", "room": room, "id": request["id"]}
    if position is not None:
        reply["position"] = position
    assert wire.reply(reply) == []


# -- rooms and their requests --------------------------------------------------------------------


def test_a_join_is_one_request_answered_once() -> None:
    wire = Wire()
    done = wire.core.join("r")
    assert wire.core.join("r") is done  # idempotent: one join
    (request,) = wire.write()
    assert request == {"type": "join_room", "room": "r", "id": request["id"]}
    assert not done.done
    assert wire.reply({"type": "room_joined", "room": "r", "id": request["id"]}) == []
    assert done.done and not done.failed
    assert wire.core.rooms == {"r"}


def test_a_refused_join_fails_with_the_servers_code_and_forgets_the_room() -> None:
    wire = Wire()
    done = wire.core.join("r")
    (request,) = wire.write()
    refusal = {"type": "error", "code": "room_full", "message": "full", "id": request["id"]}
    assert wire.reply(refusal) == []
    with pytest.raises(ServerError) as info:
        done.check()
    assert (info.value.code, info.value.room) == ("room_full", "r")
    assert wire.core.rooms == frozenset()


def test_only_a_pending_id_with_a_reply_type_is_a_reply() -> None:
    """A room message whose application `id` equals a pending request's is delivered; so is a
    reply type with an id the client never sent, and an `id` of any JSON type."""
    wire = Wire()
    wire.core.join("r")
    (request,) = wire.write()
    impostor = {"type": "chat", "room": "r", "id": request["id"]}
    assert wire.reply(impostor) == [impostor]
    stranger = {"type": "room_joined", "room": "x", "id": "someone-else"}
    assert wire.reply(stranger) == [stranger]
    for odd_id in ({"n": 1}, [1], 3, None, True):
        message = {"type": "error", "room": "r", "id": odd_id}
        assert wire.reply(message) == [message]
    assert wire.reply({"type": "room_joined", "room": "r", "id": request["id"]}) == []


def test_leave_is_sent_only_when_the_connection_holds_the_room() -> None:
    wire = Wire()
    assert wire.core.leave("nowhere") is None
    joined(wire, "r")
    done = wire.core.leave("r")
    assert done is not None and wire.core.rooms == frozenset()
    (request,) = wire.write()
    assert request == {"type": "leave_room", "room": "r", "id": request["id"]}
    assert wire.reply({"type": "room_left", "room": "r", "id": request["id"]}) == []
    assert done.done and not done.failed


def test_leaving_before_the_join_is_written_sends_nothing() -> None:
    wire = Wire()
    join = wire.core.join("r")
    assert wire.core.leave("r") is None
    with pytest.raises(ClientError, match="left room 'r' before the join completed"):
        join.check()
    assert wire.write() == []  # the queued join is skipped: the room is no longer wanted


def test_a_kick_forgets_the_room_and_reaches_the_app() -> None:
    wire = Wire()
    joined(wire, "r", at(3))
    kick = {"type": "room_kicked", "room": "r"}
    assert wire.reply(kick) == [kick]
    assert wire.core.rooms == frozenset() and wire.core.position("r") is None
    assert wire.reconnect() == []  # not rejoined


# -- positions, rejoins and the duplicate rule ---------------------------------------------------


def test_a_rejoin_asks_for_what_was_missed_since_the_last_position() -> None:
    wire = Wire()
    joined(wire, "r", at(2))
    assert wire.reply(chat("r", 3)) and wire.reply(chat("r", 5))
    assert wire.core.position("r") == at(5)
    (rejoin,) = wire.reconnect()
    assert rejoin == {"type": "join_room", "room": "r", "id": rejoin["id"], "since": at(5)}
    assert wire.book.restoring
    assert wire.reply({"type": "room_joined", "room": "r", "id": rejoin["id"]}) == []
    assert not wire.book.restoring


def test_replayed_and_live_copies_of_an_offset_reach_the_app_once() -> None:
    wire = Wire()
    joined(wire, "r", at(2))
    assert wire.reply(chat("r", 4)) == [chat("r", 4)]
    assert wire.reply(chat("r", 4)) == []  # a duplicate
    assert wire.reply(chat("r", 3)) == [chat("r", 3)]  # late: delivered
    assert wire.core.position("r") == at(4)  # and the position did not move back
    assert wire.stats.duplicates == 1


def test_a_lost_recovery_is_reported_once_and_the_latest_page_refetched_first() -> None:
    wire = Wire()
    joined(wire, "r", at(2))
    wire.core.refetch_limit = 7
    (rejoin,) = wire.reconnect()
    reply = {
        "type": "room_joined",
        "room": "r",
        "id": rejoin["id"],
        "recovered": False,
        "reason": "retention",
        "position": at(0, "f"),
    }
    assert wire.reply(reply) == []
    assert wire.core.take_recovery_failures() == [("r", "retention")]
    assert wire.core.take_recovery_failures() == []
    assert wire.write()[0] == {"type": "history", "room": "r", "limit": 7}
    assert wire.core.position("r") == at(0, "f")


def test_a_room_left_while_the_client_rejoins_is_not_joined_again() -> None:
    """The app leaves a room while the rejoins of a new connection are being written: the
    rooms not written yet are skipped (before, the client joined the room it had left)."""
    wire = Wire()
    for room in ("a", "b"):
        joined(wire, room)
    wire.core.connection_ended(wire.book)
    wire.book = wire.core.open_connection(None)
    frames = wire.core.restore_frames(wire.book)
    assert json.loads(next(frames))["room"] == "a"  # written; "b" is not yet
    assert wire.core.leave("b") is None  # this connection does not hold it
    assert list(frames) == []
    assert wire.book.rejoined == ("a",)


# -- table subscriptions -------------------------------------------------------------------------


def change(sid: str, offset: int, table: str = "t", epoch: str = "e") -> Message:
    event = {"op": "insert", "row": {"n": offset}, "position": at(offset, epoch)}
    return {"type": "data_update", "subscription": sid, "table": table, "event": event}


def subscribed(wire: Wire, table: str = "t") -> tuple[str, str]:
    """Subscribe and answer with server id "s1"; returns (key, request id)."""
    key, live = wire.core.subscribe(table, {"n": 1}, awaited=True)
    (request,) = wire.write()
    assert request == {
        "type": "subscribe",
        "table": table,
        "filters": {"n": 1},
        "id": request["id"],
    }
    wire.reply({"type": "subscribed", "subscription": "s1", "id": request["id"]})
    assert live.done and not live.failed
    return key, request["id"]


def test_changes_replayed_before_subscribed_are_held_then_delivered_in_order() -> None:
    wire = Wire()
    key, _ = wire.core.subscribe("t", None, awaited=False)
    (request,) = wire.write()
    assert wire.reply(change("s9", 1)) == []  # an id nobody named yet: held
    assert wire.reply(change("s9", 2)) == []
    reply = {"type": "subscribed", "subscription": "s9", "id": request["id"]}
    delivered = wire.reply(reply)
    assert [(m["key"], m["event"]["position"]["offset"]) for m in delivered] == [
        (key, 1),
        (key, 2),
    ]
    assert wire.reply(change("s9", 2)) == []  # replayed and live: once
    assert wire.reply(change("s9", 3))[0]["key"] == key


def test_a_renewal_starts_from_the_last_change_received() -> None:
    wire = Wire()
    key, _ = subscribed(wire)
    wire.reply(change("s1", 4))
    (renewal,) = wire.reconnect()
    assert renewal["since"] == at(4) and renewal["table"] == "t"
    # The old id means nothing now: held while a subscribe of its table is in flight, then
    # delivered untouched once the reply names another id.
    assert wire.reply(change("s1", 5)) == []
    reply = {"type": "subscribed", "subscription": "s2", "id": renewal["id"], "position": at(6)}
    assert wire.reply(reply) == [change("s1", 5)]
    assert wire.reply(change("s2", 4)) == []  # received before the reconnect
    assert wire.reply(change("s2", 7))[0]["key"] == key


def test_a_refused_subscription_is_raised_when_awaited_else_delivered_with_its_key() -> None:
    wire = Wire()
    awaited_key, awaited = wire.core.subscribe("t", None, awaited=True)
    key, _ = wire.core.subscribe("u", None, awaited=False)
    first, second = wire.write()
    refusal = {"type": "error", "code": "not_permitted", "message": "no"}
    assert wire.reply({**refusal, "id": first["id"]}) == []
    with pytest.raises(ServerError, match="not_permitted"):
        awaited.check()
    assert wire.reply({**refusal, "id": second["id"]}) == [
        {**refusal, "id": second["id"], "key": key}
    ]
    assert wire.core.subscriptions == {}
    assert awaited_key not in wire.core.subscriptions


def test_unsubscribing_before_subscribed_tells_the_server_first_and_drops_its_changes() -> None:
    wire = Wire()
    key, live = wire.core.subscribe("t", None, awaited=False)
    (request,) = wire.write()
    wire.core.unsubscribe(key)
    with pytest.raises(ClientError, match="unsubscribed 'sub1' before it was live"):
        live.check()
    assert wire.reply({"type": "subscribed", "subscription": "s1", "id": request["id"]}) == []
    (unsubscribe,) = wire.write()
    assert unsubscribe == {"type": "unsubscribe", "subscription": "s1", "id": unsubscribe["id"]}
    assert wire.reply(change("s1", 1)) == []  # in flight: dropped
    assert wire.reply({"type": "unsubscribed", "id": unsubscribe["id"]}) == []


def test_changes_of_a_subscription_the_client_did_not_make_reach_the_app() -> None:
    wire = Wire()
    foreign = change("x1", 1, table="other")
    assert wire.reply(foreign) == [foreign]


# -- a connection's end and the client's end -----------------------------------------------------


def test_the_end_of_a_connection_settles_what_was_tied_to_it() -> None:
    wire = Wire()
    joined(wire, "a")
    joined(wire, "b")
    _, _ = subscribed(wire)
    sent_leave = wire.core.leave("a")
    (leave_request,) = wire.write()
    assert leave_request["type"] == "leave_room"
    queued_leave = wire.core.leave("b")
    wire.core.unsubscribe("sub1")  # an unsubscribe queued for this connection
    wire.core.outbox.put_message('{"type":"m"}')
    assert sent_leave is not None and queued_leave is not None
    wire.core.connection_ended(wire.book)
    assert sent_leave.done and queued_leave.done  # the rooms were left with the connection
    assert wire.core.connection is None
    wire.book = wire.core.open_connection(None)
    assert wire.write() == [{"type": "m"}]  # the message waits; the unsubscribe is moot


def test_closing_discards_the_outbox_and_fails_what_waits() -> None:
    wire = Wire()
    join = wire.core.join("r")
    _, live = wire.core.subscribe("t", None, awaited=True)
    wire.core.outbox.put_message('{"type":"m"}')
    wire.core.close(lambda: ClientError("closed"))
    for completion in (join, live):
        with pytest.raises(ClientError, match="closed"):
            completion.check()
    assert wire.stats.discarded == 1 and not wire.core.outbox
    assert wire.core.rooms == frozenset()


def test_an_in_band_refresh_reply_is_consumed() -> None:
    wire = Wire()
    frame = json.loads(wire.core.refresh_request(wire.book, "tok", 100.0))
    assert frame == {"type": "refresh", "token": "tok", "id": frame["id"]}
    assert wire.book.token_expires_at == 100.0
    assert wire.reply({"type": "refreshed", "id": frame["id"]}) == []
    second = json.loads(wire.core.refresh_request(wire.book, "tok2", 200.0))
    assert wire.reply({"type": "error", "code": "invalid_field", "id": second["id"]}) == []
    assert wire.book.token_expires_at is None  # refused: the reconnect after 4004 refreshes


def test_every_change_wakes_the_io_side() -> None:
    wire = Wire()
    before = wire.changes
    wire.core.join("r")
    assert wire.changes > before


def test_a_new_connection_book_is_empty() -> None:
    book = ConnectionBook()
    assert not book.restoring and book.rejoined == () and book.token_expires_at is None

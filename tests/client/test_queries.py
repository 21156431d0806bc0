"""One-shot queries of the client's sans-IO core (``presence``, ``presence_stats``): rendered on
the connection of the moment, answered by id and type, asked again on the next connection when
the first one ends unanswered, failed at close. No sockets (`Wire` plays the server)."""

from __future__ import annotations

import pytest

from trio_rt.client import ClientClosed, ServerError
from trio_rt.client._queries import PRESENCE_REPLIES

from .test_state import Wire


def test_a_query_is_answered_by_its_reply_which_the_app_does_not_see() -> None:
    w = Wire()
    query = w.core.query({"type": "presence", "room": "r"}, PRESENCE_REPLIES)
    [sent] = w.write()
    assert sent["type"] == "presence" and sent["room"] == "r"
    # An event carrying the same id but another type is not the answer.
    event = {"type": "presence_diff", "room": "r", "id": sent["id"]}
    assert w.reply(event) == [event]
    assert not query.done.done
    answer = {"type": "presence", "room": "r", "members": [], "id": sent["id"]}
    assert w.reply(answer) == []
    assert query.done.done and query.reply == answer


def test_an_error_reply_fails_the_query_with_server_error() -> None:
    w = Wire()
    query = w.core.query({"type": "presence", "room": "r"}, PRESENCE_REPLIES)
    [sent] = w.write()
    w.reply({"type": "error", "code": "too_large", "users": 5, "room": "r", "id": sent["id"]})
    with pytest.raises(ServerError) as info:
        query.done.check()
    assert info.value.code == "too_large" and info.value.reply["users"] == 5


def test_a_query_unanswered_when_the_connection_ends_is_asked_again() -> None:
    w = Wire()
    query = w.core.query({"type": "presence_stats", "room": "r"}, frozenset({"presence_stats"}))
    [first] = w.write()
    w.reconnect()
    [again] = w.write()
    assert again["type"] == "presence_stats" and again["id"] != first["id"]
    w.reply({"type": "presence_stats", "users": 1, "id": again["id"]})
    assert query.done.done and query.reply is not None and query.reply["users"] == 1


def test_closing_fails_what_is_pending() -> None:
    w = Wire()
    query = w.core.query({"type": "presence", "room": "r"}, PRESENCE_REPLIES)
    w.core.close(lambda: ClientClosed())
    with pytest.raises(ClientClosed):
        query.done.check()

"""Acknowledged publishes (trio_rt._engine.publish.Publisher) over real sockets, with the memory
backends: the ack carries the stored position, a resend with the same id is acked the same
and neither stored nor delivered again, refusals say why, and failures free the id (nothing
stored) or keep its position (stored, not confirmed by the broker)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from trio_rt import BrokerUnavailable, Connection, MemoryBroker, WebSocketManager
from trio_rt._core.acks import (
    AckOutcome,
    AckResult,
    MemoryIdempotencyStore,
    api_idempotency_key,
    idempotency_key,
    parse_publish,
)
from trio_rt._core.protocol import ProtocolError, StreamPosition
from trio_rt._engine.history import RoomHistory
from trio_rt._engine.publish import Publisher, PublishRefused
from trio_rt._engine.streams import MemoryStreamStore

from ..conftest import Client, client


def identified(make_manager: Any, **kwargs: Any) -> WebSocketManager:
    manager: WebSocketManager = make_manager(**kwargs)

    @manager.on_connection
    async def identify(conn: Connection) -> None:
        users = conn.request.query.get("user")
        if users:
            conn.user_id = users[0]

    return manager


async def join(c: Client, room: str) -> dict[str, Any]:
    joined = await c.request({"type": "join_room", "room": room, "id": "j"})
    assert joined["type"] == "room_joined", joined
    return joined


# -- sans-IO ----------------------------------------------------------------------------------
def test_parse_publish_names_the_wrong_field() -> None:
    ok = parse_publish({"type": "publish", "room": "r", "data": {"x": 1}, "id": 5}, 5)
    assert (ok.room, ok.data, ok.publish_id) == ("r", {"x": 1}, 5)
    assert parse_publish({"room": "r", "data": None, "id": "a"}, "a").data is None
    for message, rid, words in [
        ({"room": "r", "data": 1}, None, "'id' is required"),
        ({"data": 1, "id": 1}, 1, "'room'"),
        ({"room": "has space", "data": 1, "id": 1}, 1, "'room'"),
        ({"room": "r", "id": 1}, 1, "missing 'data'"),
    ]:
        with pytest.raises(ProtocolError, match=words) as info:
            parse_publish(message, rid)
        assert info.value.code == "invalid_field" and info.value.request_id == rid


def test_idempotency_keys_never_collide_across_identities_or_id_types() -> None:
    keys = {
        idempotency_key("ann", "c1", "1"),
        idempotency_key("ann", "c1", 1),  # a string id and a number id are different ids
        idempotency_key("ann", "c2", "1"),  # the same user on another connection: same key
        idempotency_key(None, "c1", "1"),  # anonymous: the connection's
        idempotency_key("ann:s:1:1", "c1", "x"),  # a user id that looks like a key
        idempotency_key("ann", "c1", "s:1:1"),
        api_idempotency_key("ann", "1"),  # an API client named like a user
    }
    assert len(keys) == 6  # ann/c1/"1" and ann/c2/"1" are one key: the user's
    assert idempotency_key("ann", "c1", "1") == idempotency_key("ann", "c2", "1")


# -- over sockets -----------------------------------------------------------------------------
async def test_publish_is_acked_with_its_position_and_a_resend_is_not_stored_again(
    make_manager: Any,
) -> None:
    store = MemoryStreamStore()
    manager = identified(make_manager, history=RoomHistory(store))
    publisher = Publisher(manager)
    async with manager, client(manager, "/?user=ann") as ann, client(manager) as bob:
        epoch = (await join(ann, "r"))["position"]["epoch"]
        await join(bob, "r")
        publish = {"type": "publish", "room": "r", "data": {"text": "hi"}, "id": "m1"}
        await ann.send(publish)
        got = [await ann.recv(), await ann.recv()]  # its own publication and the ack
        ack = next(m for m in got if m["type"] == "ack")
        assert ack == {
            "type": "ack",
            "room": "r",
            "position": {"offset": 1, "epoch": epoch},
            "id": "m1",
        }
        publication = await bob.recv()
        assert publication == {
            "type": "publication",
            "room": "r",
            "data": {"text": "hi"},
            "user_id": "ann",
            "position": {"offset": 1, "epoch": epoch},
        }
        # The resend (same user, same id) gets the same ack and nothing else happens.
        assert await ann.request(publish) == ack
        # ...also from another connection of the same user (a reconnect).
        async with client(manager, "/?user=ann") as again:
            await join(again, "r")
            assert await again.request(publish) == ack
        # A new id is a new message; bob got exactly one copy of the first.
        await ann.send({**publish, "id": "m2", "data": "second"})
        nxt = await bob.recv()
        assert nxt["data"] == "second" and nxt["position"]["offset"] == 2
        assert len(await store.read("room:r", epoch, 0, 100)) == 2
        assert publisher.acks[AckOutcome.ACKED] == 2
        assert publisher.acks[AckOutcome.DUPLICATE] == 2


async def test_refusals_say_why_and_store_nothing(make_manager: Any) -> None:
    store = MemoryStreamStore()
    manager = identified(make_manager, history=RoomHistory(store))
    allowed: set[str] = {"open", "other"}

    async def allow(conn: Connection, room: str) -> bool:
        return room in allowed

    publisher = Publisher(manager, allow=allow)
    async with manager, client(manager, "/?user=ann") as ann:
        outside = await ann.request({"type": "publish", "room": "open", "data": 1, "id": 1})
        assert outside["code"] == "not_in_room" and outside["id"] == 1
        await join(ann, "open")
        await join(ann, "closed")
        hook = await ann.request({"type": "publish", "room": "closed", "data": 1, "id": 2})
        assert hook["code"] == "not_permitted" and hook["id"] == 2
        no_id = await ann.request({"type": "publish", "room": "open", "data": 1})
        assert no_id["code"] == "invalid_field" and "'id'" in no_id["message"]
        no_data = await ann.request({"type": "publish", "room": "open", "id": 3})
        assert no_data["code"] == "invalid_field" and "data" in no_data["message"]
        bad_room = await ann.request({"type": "publish", "room": 5, "data": 1, "id": 4})
        assert bad_room["code"] == "invalid_field"
        # An id already used for another room within the window is refused.
        await ann.send({"type": "publish", "room": "open", "data": 1, "id": 9})
        assert (await ann.recv())["type"] == "publication"
        assert (await ann.recv())["type"] == "ack"
        await join(ann, "other")
        reused = await ann.request({"type": "publish", "room": "other", "data": 1, "id": 9})
        assert reused["code"] == "invalid_field" and "'open'" in reused["message"]
        epoch = (await manager.history.current("open")).epoch  # type: ignore[union-attr]
        assert len(await store.read("room:open", epoch, 0, 100)) == 1
        # (the room rule's refusal of a bad room is the dispatch's: not an ack outcome)
        assert publisher.acks[AckOutcome.REFUSED] == 5


async def test_publish_is_unknown_without_a_publisher(make_manager: Any) -> None:
    async with make_manager() as manager, client(manager) as c:
        await join(c, "r")
        answer = await c.request({"type": "publish", "room": "r", "data": 1, "id": 1})
        assert answer["code"] == "unknown_type"


class FlakyStore(MemoryStreamStore):
    """Fails the next `failures` appends (nothing stored)."""

    failures = 0

    async def append(self, *args: Any, **kwargs: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store down")
        await super().append(*args, **kwargs)


async def test_a_failed_store_frees_the_id_and_the_resend_is_stored_once(
    make_manager: Any,
) -> None:
    store = FlakyStore()
    manager = identified(make_manager, history=RoomHistory(store))
    publisher = Publisher(manager)
    async with manager, client(manager, "/?user=ann") as ann:
        await join(ann, "r")
        store.failures = 1
        publish = {"type": "publish", "room": "r", "data": "x", "id": "a"}
        failed = await ann.request(publish)
        assert failed["code"] == "unavailable" and failed["retry_after"] > 0
        assert failed["id"] == "a"
        await ann.send(publish)
        got = [await ann.recv(), await ann.recv()]
        assert {m["type"] for m in got} == {"publication", "ack"}
        assert publisher.acks[AckOutcome.FAILED] == 1 and publisher.acks[AckOutcome.ACKED] == 1


class RefusingBroker(MemoryBroker):
    """Delivers locally, then refuses the next `refusals` publishes (as a Redis broker whose
    PUBLISH was never confirmed)."""

    refusals = 0

    async def publish(self, channel: str, data: bytes) -> None:
        await super().publish(channel, data)
        if self.refusals:
            self.refusals -= 1
            raise BrokerUnavailable("not confirmed")


async def test_stored_but_unconfirmed_then_the_resend_gets_the_stored_position(
    make_manager: Any,
) -> None:
    store = MemoryStreamStore()
    broker = RefusingBroker()
    manager = identified(make_manager, history=RoomHistory(store), broker=broker)
    publisher = Publisher(manager)
    async with manager, client(manager, "/?user=ann") as ann:
        await join(ann, "r")
        broker.refusals = 1
        publish = {"type": "publish", "room": "r", "data": "x", "id": "a"}
        await ann.send(publish)
        first = [await ann.recv(), await ann.recv()]
        assert first[0]["type"] == "publication"  # local delivery happened
        assert first[1]["code"] == "unavailable"
        ack = await ann.request(publish)  # the resend: the stored message's ack, no copy
        assert ack["type"] == "ack" and ack["position"] == first[0]["position"]
        epoch = first[0]["position"]["epoch"]
        assert len(await store.read("room:r", epoch, 0, 100)) == 1
        assert publisher.acks[AckOutcome.UNCONFIRMED] == 1
        assert publisher.acks[AckOutcome.DUPLICATE] == 1


class SlowStore(MemoryStreamStore):
    """Holds appends until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = trio.Event()
        self.release = trio.Event()

    async def append(self, *args: Any, **kwargs: Any) -> None:
        self.entered.set()
        await self.release.wait()
        await super().append(*args, **kwargs)


async def test_a_resend_while_the_first_attempt_runs_waits_for_its_ack(
    make_manager: Any,
) -> None:
    store = SlowStore()
    manager = identified(make_manager, history=RoomHistory(store))
    publisher = Publisher(manager)
    results: list[AckResult] = []
    key = idempotency_key("ann", "c", "a")
    async with manager:

        async def attempt() -> None:
            results.append(await publisher.publish("r", "x", user_id="ann", key=key))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt)
            await store.entered.wait()
            nursery.start_soon(attempt)  # finds the claim: waits for the outcome
            await trio.testing.wait_all_tasks_blocked()
            store.release.set()
        assert results[0] == results[1] and results[0].position == StreamPosition(
            1,
            results[0].position.epoch,  # type: ignore[union-attr]
        )
        assert publisher.acks[AckOutcome.ACKED] == 1
        assert publisher.acks[AckOutcome.DUPLICATE] == 1


async def test_an_attempt_that_never_finishes_answers_in_progress(make_manager: Any) -> None:
    idem = MemoryIdempotencyStore()
    manager = make_manager()
    publisher = Publisher(manager, idempotency=idem, pending_wait=0)
    await idem.claim("k", "someone-else", 60)
    async with manager:
        with pytest.raises(PublishRefused) as info:
            await publisher.publish("r", "x", key="k")
    assert info.value.code == "unavailable" and info.value.outcome == AckOutcome.IN_PROGRESS
    assert publisher.acks[AckOutcome.IN_PROGRESS] == 1


async def test_rooms_without_history_ack_with_no_position(make_manager: Any) -> None:
    manager = make_manager()
    Publisher(manager)
    async with manager, client(manager) as c:
        await join(c, "r")
        await c.send({"type": "publish", "room": "r", "data": 1, "id": 1})
        got = [await c.recv(), await c.recv()]
        assert got[1] == {"type": "ack", "room": "r", "position": None, "id": 1}

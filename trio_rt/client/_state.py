"""The client's sans-IO core: everything that decides what a server message means for the
client and what the client writes next. Everything that affects the client's rooms,
positions, subscriptions and requests lives here; trio_rt/client/_session.py only moves
frames between the socket and these methods.

`ClientCore` holds what survives reconnects:

- the rooms to be in (each with the `Completion` of its first join) and their positions
  (`StreamPositions`: ``since`` on a rejoin, the duplicate rule);
- the table subscriptions (table, filters, position), renewed on every connection;
- the outbox (`ClientOutbox`), whose room and subscription operations are rendered into
  requests only when written, against the connection of the moment (`render`).

`ConnectionBook` holds what one connection knows: which joins, leaves, subscribes,
unsubscribes and refreshes it sent and is waiting for (request id -> request), which rooms it
holds, the server's subscription ids, and changes held until a ``subscribed`` reply names
their subscription.

No trio, no sockets: the I/O side calls `receive` for each decoded message and delivers what it
returns, calls `render` for each outbox item and writes what it returns, and reports the
connection's start and end (`open_connection`, `restore_frames`, `connection_ended`) and the
client's end (`close`). Every change an awaiting task may care about calls ``on_change`` (the
I/O side's wake-up).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ._buffers import (
    DATA,
    JOIN,
    LEAVE,
    PUBLISH,
    QUERY,
    SUBSCRIBE,
    UNSUBSCRIBE,
    ClientOutbox,
    Item,
)
from ._completion import Completion
from ._errors import ClientError, ServerError
from ._positions import Position, StreamPositions, is_position
from ._queries import Query
from ._types import ClientStats, Message
from ._wire import (
    JOIN_REPLIES,
    PUBLISH_REPLIES,
    REFRESH_REPLIES,
    SUBSCRIBE_REPLIES,
    UNSUBSCRIBE_REPLIES,
    encode,
    request_id,
)

__all__ = ["ClientCore", "ConnectionBook", "PendingPublish", "Request", "Subscription"]

log = logging.getLogger("trio_rt.client")

REFETCH_LIMIT: Final = 50  # messages asked for when a room's recovery is not possible


@dataclass(eq=False)
class Subscription:
    """A table subscription the client keeps across reconnects (its position is kept in
    `ClientCore`'s `StreamPositions`, under its key)."""

    table: str
    filters: dict[str, Any]
    server_id: str | None = None  # the server's subscription id on the current connection
    live: Completion = field(default_factory=Completion)  # its first `subscribed` (or refusal)
    awaited: bool = False  # made by `await subscribe()`: a refusal is raised, not delivered


@dataclass(eq=False, slots=True)
class Request:
    """A join or leave sent on a connection and not answered yet."""

    kind: str  # JOIN or LEAVE
    room: str
    waiter: Completion | None


@dataclass(eq=False, slots=True)
class PendingPublish:
    """An acknowledged publish not answered yet: written (again, with the same id) on every
    connection until the server answers ``ack`` (`ack` holds it) or ``error``."""

    room: str
    frame: str
    waiter: Completion = field(default_factory=Completion)
    ack: Message | None = None


@dataclass(eq=False)
class ConnectionBook:
    """What the client tracks about one connection, from the handshake to its end."""

    join_sent: set[str] = field(default_factory=set)  # join requested on this connection
    confirmed: set[str] = field(default_factory=set)  # room_joined received on this connection
    pending: dict[str, Request] = field(default_factory=dict)  # request id -> request
    restore_ids: set[str] = field(default_factory=set)  # the rejoins of `restore_frames`
    rejoined: tuple[str, ...] = ()  # the rooms `restore_frames` rejoined, in order
    # Subscribe requests in flight: request id -> (key, table).
    subscribe_ids: dict[str, tuple[str, str]] = field(default_factory=dict)
    # data_updates of subscription ids not known yet, held while a subscribe for their table
    # is in flight (the server replays before `subscribed` names the id): id -> messages.
    held: dict[str, list[Message]] = field(default_factory=dict)
    server_ids: set[str] = field(default_factory=set)  # subscriptions held by this connection
    abandoned: set[str] = field(default_factory=set)  # ids unsubscribed: their updates dropped
    unsubscribe_ids: set[str] = field(default_factory=set)  # unsubscribe requests in flight
    failed_rooms: list[tuple[str, ServerError]] = field(default_factory=list)  # rejoins refused
    token_expires_at: float | None = None  # `exp` of the token this connection runs on
    refresh_ids: set[str] = field(default_factory=set)  # in-band refreshes awaiting a reply
    queries: dict[str, Query] = field(default_factory=dict)  # request id -> query sent
    # Publishes written on this connection and not answered, in the order written (a dict:
    # ordered). Unanswered when the connection ends: written again on the next one.
    publish_ids: dict[str, None] = field(default_factory=dict)

    @property
    def restoring(self) -> bool:
        """True while a rejoin sent by `restore_frames` is unanswered."""
        return not self.restore_ids.isdisjoint(self.pending)


class ClientCore:
    """The bookkeeping of one `WebSocketClient` (see the module docstring)."""

    def __init__(
        self, outbox: ClientOutbox, stats: ClientStats, on_change: Callable[[], None]
    ) -> None:
        self.outbox = outbox
        self.stats = stats
        self._changed = on_change
        self.connection: ConnectionBook | None = None  # the current connection, live or not
        self._rooms: dict[str, Completion] = {}  # rooms to be in -> their first join
        self._room_positions = StreamPositions()
        self._subscriptions: dict[str, Subscription] = {}
        self._sub_positions = StreamPositions()  # per subscription key
        self._by_server_id: dict[str, str] = {}  # the server's subscription id -> key
        self._subscription_keys = 0
        self._recovery_failed: list[tuple[str, str]] = []  # (room, reason): events to emit
        self.refetch_limit = REFETCH_LIMIT
        self._request_ids = 0
        self._publishes: dict[str, PendingPublish] = {}  # publish id -> until answered
        self._queries: set[Query] = set()  # not answered yet (failed at close)

    # -- what the app sees ------------------------------------------------------------------
    @property
    def rooms(self) -> frozenset[str]:
        return frozenset(self._rooms)

    def position(self, room: str) -> Position | None:
        return self._room_positions.position(room)

    @property
    def subscriptions(self) -> Mapping[str, tuple[str, dict[str, Any]]]:
        return {key: (sub.table, sub.filters) for key, sub in self._subscriptions.items()}

    # -- the app's requests -----------------------------------------------------------------
    def join(self, room: str) -> Completion:
        """Remember `room` and queue its join (once: an existing join is returned)."""
        waiter = self._rooms.get(room)
        if waiter is None:
            waiter = self._rooms[room] = Completion()
            self.outbox.put(Item(JOIN, room=room, waiter=waiter))
            self._changed()
        return waiter

    def leave(self, room: str) -> Completion | None:
        """Forget `room` (a pending join fails with ClientError). Returns the leave to await
        when the current connection holds the room, else None (nothing to tell the server:
        a join still queued for it is skipped when rendered)."""
        waiter = self._rooms.pop(room, None)
        self._forget_position(room)
        if waiter is not None:
            waiter.fail(lambda: ClientError(f"left room {room!r} before the join completed"))
        book = self.connection
        if book is None or room not in book.join_sent:
            return None
        done = Completion()
        self.outbox.put(Item(LEAVE, room=room, waiter=done))
        self._changed()
        return done

    def _forget_position(self, room: str) -> None:
        # A room left (or removed by the server) is joined afresh later, without `since`: the
        # client does not ask for what was said while it was not a member (as the browser's).
        self._room_positions.forget(room)

    def subscribe(
        self, table: str, filters: Mapping[str, Any] | None, *, awaited: bool
    ) -> tuple[str, Completion]:
        """Remember a subscription and queue its subscribe; returns its key and the completion
        of its first ``subscribed`` (or refusal: raised when `awaited`, else delivered)."""
        self._subscription_keys += 1
        key = f"sub{self._subscription_keys}"
        sub = self._subscriptions[key] = Subscription(table, dict(filters or {}), awaited=awaited)
        self.outbox.put(Item(SUBSCRIBE, room=key))
        self._changed()
        return key, sub.live

    def unsubscribe(self, key: str) -> None:
        """Forget a subscription (a pending subscribe fails with ClientError); the server is
        told if the current connection holds it. Unknown keys are ignored."""
        sub = self._subscriptions.pop(key, None)
        if sub is None:
            return
        self._sub_positions.forget(key)
        sub.live.fail(lambda: ClientError(f"unsubscribed {key!r} before it was live"))
        sid = sub.server_id
        if sid is None:
            return  # not live on this connection; a `subscribed` still in flight is handled
        self._by_server_id.pop(sid, None)
        book = self.connection
        if book is not None and sid in book.server_ids:
            book.abandoned.add(sid)
            self.outbox.put(Item(UNSUBSCRIBE, room=sid))
            self._changed()

    def query(self, message: Message, replies: frozenset[str]) -> Query:
        """Queue a one-shot request; its `done` settles with the reply (see `Query`)."""
        query = Query(message, replies)
        self._queries.add(query)
        query.done.add_done_callback(lambda: self._queries.discard(query))
        self.outbox.put(Item(QUERY, waiter=query.done, query=query))
        self._changed()
        return query

    def publish(self, room: str, data: Any, publish_id: str) -> PendingPublish:
        """Queue an acknowledged publish of `data` to `room` named `publish_id` (ValueError
        if that id is still waiting for its answer, TypeError/ValueError for data JSON cannot
        carry). It is written on the current connection, or the next one, and written again
        (the same frame, the same id: the server stores it once) on every new connection
        until the server answers."""
        if publish_id in self._publishes:
            raise ValueError(f"a publish with id {publish_id!r} is already waiting for its ack")
        frame = encode({"type": "publish", "room": room, "data": data, "id": publish_id})
        pending = self._publishes[publish_id] = PendingPublish(room, frame)
        self.outbox.put(Item(PUBLISH, text=frame, room=publish_id))
        self._changed()
        return pending

    @property
    def unacknowledged(self) -> int:
        """Publishes not answered yet (queued, written, or waiting to be written again)."""
        return len(self._publishes)

    def next_request_id(self) -> str:
        self._request_ids += 1
        return request_id(self._request_ids)

    # -- a connection's life ----------------------------------------------------------------
    def open_connection(self, token_expires_at: float | None) -> ConnectionBook:
        """A WebSocket is open: it becomes the current connection."""
        book = self.connection = ConnectionBook(token_expires_at=token_expires_at)
        return book

    def restore_frames(self, book: ConnectionBook) -> Iterator[str]:
        """The requests that restore the client on a new connection, in order: a join per
        remembered room (with ``since``), then a subscribe per subscription (from its
        position). Each is registered as sent just before it is yielded: write each one
        before asking for the next. A room left or a subscription dropped meanwhile is
        skipped (this connection does not hold it: `leave` had nothing to tell the server).
        `book.rejoined` lists the rooms rejoined."""
        for room, waiter in list(self._rooms.items()):
            if self._rooms.get(room) is not waiter:
                continue  # left (or left and joined again: that join is queued) meanwhile
            book.rejoined += (room,)
            rid = self.next_request_id()
            book.pending[rid] = Request(JOIN, room, waiter)
            book.restore_ids.add(rid)
            book.join_sent.add(room)
            yield encode(self._join_message(room, rid))
        self._by_server_id.clear()
        for sub in self._subscriptions.values():
            sub.server_id = None  # the ids of the previous connection mean nothing here
        for key, sub in list(self._subscriptions.items()):
            if self._subscriptions.get(key) is sub:  # not unsubscribed meanwhile
                yield encode(self._subscribe_message(key, sub, book))

    def connection_ended(self, book: ConnectionBook) -> None:
        """The connection is over: what was tied to it is settled."""
        if self.connection is book:
            self.connection = None
        for request in book.pending.values():
            if request.kind == LEAVE and request.waiter is not None:
                request.waiter.succeed()  # the room was left with the connection
        book.pending.clear()
        for query in book.queries.values():  # unanswered: asked again on the next connection
            if not query.done.done:
                self.outbox.put(Item(QUERY, waiter=query.done, query=query))
        book.queries.clear()
        # Publishes written and not answered: maybe stored, maybe not. Written again first on
        # the next connection (they were sent before anything still queued), in their order.
        for publish_id in reversed(list(book.publish_ids)):
            pending = self._publishes.get(publish_id)
            if pending is not None:
                self.outbox.put_first(Item(PUBLISH, text=pending.frame, room=publish_id))
                self.stats.resent += 1
        book.publish_ids.clear()
        self.outbox.connection_ended()
        self._changed()

    def close(self, make_error: Callable[[], BaseException]) -> None:
        """The client closed: discard the outbox, fail what waits for a join or a subscription
        with `make_error`'s exception."""
        self.outbox.discard()
        for waiter in self._rooms.values():
            waiter.fail(make_error)
        self._rooms.clear()
        for sub in self._subscriptions.values():
            sub.live.fail(make_error)
        for query in list(self._queries):
            query.done.fail(make_error)
        for pending in self._publishes.values():
            pending.waiter.fail(make_error)
        self._publishes.clear()
        self._changed()

    def take_recovery_failures(self) -> list[tuple[str, str]]:
        """The (room, reason) of each ``recovery_failed`` event to emit, oldest first."""
        failures = self._recovery_failed
        if failures:
            self._recovery_failed = []
        return failures

    def refresh_request(self, book: ConnectionBook, token: str, expires_at: float) -> str:
        """The in-band ``refresh`` carrying a fresh token, registered as awaiting its reply."""
        rid = self.next_request_id()
        book.refresh_ids.add(rid)
        book.token_expires_at = expires_at  # until the reply says otherwise
        return encode({"type": "refresh", "token": token, "id": rid})

    # -- writing ----------------------------------------------------------------------------
    def render(self, book: ConnectionBook, item: Item) -> str | None:
        """The frame for an outbox item on this connection, or None if there is nothing to do."""
        if item.kind == DATA:
            return item.text
        if item.kind == QUERY:
            query = item.query
            assert query is not None
            if query.done.done:
                return None
            rid = self.next_request_id()
            book.queries[rid] = query
            return encode({**query.message, "id": rid})
        room = item.room
        if item.kind == PUBLISH:
            if room not in self._publishes or room in book.publish_ids:
                return None  # answered meanwhile, or already written on this connection
            book.publish_ids[room] = None
            return item.text
        if item.kind == JOIN:
            if self._rooms.get(room) is not item.waiter:
                return None  # left since: the leave_room call resolved this join
            if room in book.join_sent:
                if room in book.confirmed and item.waiter is not None:
                    item.waiter.succeed()
                return None  # already joined (or joining) on this connection
            rid = self.next_request_id()
            book.pending[rid] = Request(JOIN, room, item.waiter)
            book.join_sent.add(room)
            return encode(self._join_message(room, rid))
        if item.kind == SUBSCRIBE:
            sub = self._subscriptions.get(room)
            if (
                sub is None
                or sub.server_id is not None
                or any(key == room for key, _ in book.subscribe_ids.values())
            ):
                return None  # unsubscribed meanwhile, or already subscribed on this connection
            return encode(self._subscribe_message(room, sub, book))
        if item.kind == UNSUBSCRIBE:
            if room not in book.server_ids:
                return None  # another connection's subscription: it ended with it
            book.server_ids.discard(room)
            rid = self.next_request_id()
            book.unsubscribe_ids.add(rid)
            return encode({"type": "unsubscribe", "subscription": room, "id": rid})
        # LEAVE
        assert item.waiter is not None
        if room in self._rooms or room not in book.join_sent:
            item.waiter.succeed()  # joined again since, or not held by this connection
            return None
        rid = self.next_request_id()
        book.pending[rid] = Request(LEAVE, room, item.waiter)
        book.join_sent.discard(room)
        book.confirmed.discard(room)
        return encode({"type": "leave_room", "room": room, "id": rid})

    def _join_message(self, room: str, rid: str) -> Message:
        message: Message = {"type": "join_room", "room": room, "id": rid}
        since = self._room_positions.position(room)
        if since is not None:
            message["since"] = since
        return message

    def _subscribe_message(self, key: str, sub: Subscription, book: ConnectionBook) -> Message:
        rid = self.next_request_id()
        book.subscribe_ids[rid] = (key, sub.table)
        message: Message = {
            "type": "subscribe",
            "table": sub.table,
            "filters": sub.filters,
            "id": rid,
        }
        since = self._sub_positions.position(key)
        if since is not None:
            message["since"] = since
        return message

    # -- reading ----------------------------------------------------------------------------
    def receive(self, book: ConnectionBook, message: Message) -> list[Message]:
        """Apply what a server message means for rooms, positions, subscriptions and requests.

        Returns the messages to deliver to the app, in order: usually `message` itself, nothing
        for a consumed reply or a duplicate, several when a `subscribed` reply releases the
        changes replayed before it. Message types the client does not know reach the app
        untouched."""
        mtype = message["type"]
        if mtype == "data_update":
            return self._on_data_update(book, message)
        # A reply answers a request this client has pending AND has a reply type; a message
        # that merely carries an application field named `id` (of any JSON type) is an
        # ordinary message.
        rid = message.get("id")
        rid = rid if isinstance(rid, str) else None
        if rid is not None and mtype in SUBSCRIBE_REPLIES and rid in book.subscribe_ids:
            return self._on_subscribe_reply(book, message, rid)
        if rid is not None and mtype in PUBLISH_REPLIES and rid in book.publish_ids:
            del book.publish_ids[rid]
            pending = self._publishes.pop(rid, None)
            if pending is not None:
                if mtype == "ack":
                    pending.ack = message
                    pending.waiter.succeed()
                else:
                    pending.waiter.fail(lambda: ServerError(message, room=pending.room))
                self._changed()
            return []  # the answer to a publish(): consumed
        if rid is not None and mtype in UNSUBSCRIBE_REPLIES and rid in book.unsubscribe_ids:
            book.unsubscribe_ids.discard(rid)
            return []  # the reply to an unsubscribe() (or to a dropped subscription)
        if self._track_room_position(message):
            return []
        if self._handle_control(book, message, rid):
            return []
        return [message]

    def _on_data_update(self, book: ConnectionBook, message: Message) -> list[Message]:
        sid = message.get("subscription")
        if not isinstance(sid, str):
            return [message]
        if sid in book.abandoned:
            return []  # a change of a subscription this client dropped, still in flight
        key = self._by_server_id.get(sid)
        if key is None:
            table = message.get("table")
            if any(t == table or table is None for _, t in book.subscribe_ids.values()):
                # Most likely the replay of a subscribe in flight: the server sends it before
                # `subscribed` names the id. Held until a reply claims it.
                book.held.setdefault(sid, []).append(message)
                return []
            return [message]  # not a subscription of this client's (a raw `subscribe` sent)
        return self._claim_update(key, message)

    def _claim_update(self, key: str, message: Message) -> list[Message]:
        """A change of subscription `key`: dropped when already received, else delivered with
        the key; its position is where a renewal starts."""
        if key not in self._subscriptions:
            return []
        event = message.get("event")
        position = event.get("position") if isinstance(event, dict) else None
        if is_position(position) and not self._sub_positions.received(key, position):
            self.stats.duplicates += 1
            return []
        message["key"] = key
        return [message]

    def _on_subscribe_reply(
        self, book: ConnectionBook, message: Message, rid: str
    ) -> list[Message]:
        mtype = message["type"]
        key, table = book.subscribe_ids.pop(rid)
        sub = self._subscriptions.get(key)
        sid = message.get("subscription")
        held = book.held.pop(sid, []) if isinstance(sid, str) else []
        deliveries: list[Message] = []
        if mtype == "subscribed":
            if sub is None:
                # Unsubscribed while the request was in flight: the server holds it now.
                if isinstance(sid, str):
                    book.abandoned.add(sid)
                    book.server_ids.add(sid)
                    self.outbox.put_first(Item(UNSUBSCRIBE, room=sid))
                    self._changed()
            else:
                if isinstance(sid, str):
                    sub.server_id = sid
                    self._by_server_id[sid] = key
                    book.server_ids.add(sid)
                for update in held:
                    deliveries.extend(self._claim_update(key, update))
                position = message.get("position")
                if is_position(position):
                    self._sub_positions.catch_up(key, position)
                if message.get("recovered") is False:
                    self._recovery_failed.append(
                        ("subscription:" + key, str(message.get("reason")))
                    )
                sub.live.succeed()
        else:  # "error" (SUBSCRIBE_REPLIES)
            if sub is not None:  # else: unsubscribed meanwhile, nobody to tell
                del self._subscriptions[key]
                self._sub_positions.forget(key)
                raised = sub.awaited and not sub.live.done  # `await subscribe()` hears it
                sub.live.fail(lambda: ServerError(message))
                if not raised:
                    message["key"] = key
                    deliveries.append(message)
        # Held changes no subscribe in flight can claim any more are not this client's
        # subscriptions' (a raw `subscribe` the app sent): delivered untouched.
        if not any(t == table for _, t in book.subscribe_ids.values()):
            for other in [s for s, msgs in book.held.items() if msgs[0].get("table") == table]:
                deliveries.extend(book.held.pop(other))
        return deliveries

    def _recovery_lost(self, room: str, reason: str) -> None:
        """What `room` missed cannot be replayed: report it once and refetch the latest page."""
        self._recovery_failed.append((room, reason))
        history = {"type": "history", "room": room, "limit": self.refetch_limit}
        self.outbox.put_message_first(encode(history))
        self._changed()

    def _track_room_position(self, message: Message) -> bool:
        """Positions and duplicates of the rooms this client is in. True: a duplicate (the app
        already has it: not delivered)."""
        room = message.get("room")
        if not isinstance(room, str) or room not in self._rooms:
            return False
        mtype = message["type"]
        position: object = message.get("position")
        if mtype == "room_joined":
            if message.get("recovered") is False:
                self._recovery_lost(room, str(message.get("reason")))
            if is_position(position):
                # The room's position, sent as `since` after a reconnect. It marks nothing as
                # received: an offset at or below it that was still being written when the
                # client joined may come later, and is delivered.
                self._room_positions.reset(room, position)
            return False
        if mtype == "room_gap":
            # A server announcing that this connection missed messages it cannot send: as a
            # failed recovery. The message itself reaches the app untouched.
            self._recovery_lost(room, str(message.get("reason", "gap")))
            return False
        if not is_position(position):
            return False
        # A room message is positioned by its own offset; a `history` page (the server's
        # reply, whoever asked for it) only carries the room's current position. An `id` field
        # says nothing: applications may put one in their room messages.
        if mtype == "history" and isinstance(message.get("messages"), list):
            self._room_positions.advance(room, position)
        elif not self._room_positions.received(room, position):
            self.stats.duplicates += 1
            return True
        return False

    def _handle_control(self, book: ConnectionBook, message: Message, rid: str | None) -> bool:
        """Apply what a message means for rooms and requests. True: consumed (not delivered)."""
        mtype = message["type"]
        if rid is not None and mtype in REFRESH_REPLIES and rid in book.refresh_ids:
            book.refresh_ids.discard(rid)
            if mtype == "error":
                log.warning("in-band token refresh refused: %s", message.get("message"))
                book.token_expires_at = None  # the reconnect after 4004 takes a fresh token
            return True
        query = book.queries.get(rid) if rid is not None else None
        if rid is not None and query is not None and mtype in query.replies:
            del book.queries[rid]
            query.reply = message
            if mtype == "error":
                query.done.fail(lambda: ServerError(message, room=message.get("room")))
            else:
                query.done.succeed()
            return True
        if rid is not None and mtype in JOIN_REPLIES and rid in book.pending:
            self._on_room_reply(book, message, rid)
            return True
        if mtype in ("room_kicked", "room_left"):
            # Removed by the server (kicked, room deleted) or left by a raw leave_room message.
            name = message.get("room")
            if isinstance(name, str):
                book.join_sent.discard(name)
                book.confirmed.discard(name)
                self._forget_position(name)
                waiter = self._rooms.pop(name, None)
                if waiter is not None:
                    waiter.fail(lambda: ServerError(message, room=name))
                self._changed()
        return False

    def _on_room_reply(self, book: ConnectionBook, message: Message, rid: str) -> None:
        """The reply to a join or leave this connection sent."""
        mtype = message["type"]
        request = book.pending.pop(rid)
        room = request.room
        if request.kind == JOIN:
            current = self._rooms.get(room)
            if mtype == "room_joined":
                book.confirmed.add(room)
                if current is not None:
                    current.succeed()
            elif mtype == "error":
                book.join_sent.discard(room)
                if current is not None and current is request.waiter:
                    del self._rooms[room]
                    current.fail(lambda: ServerError(message, room=room))
                    if rid in book.restore_ids:
                        book.failed_rooms.append((room, ServerError(message, room=room)))
                elif current is not None:
                    # Left and joined again while this request was in flight: try again.
                    self.outbox.put(Item(JOIN, room=room, waiter=current))
        elif request.waiter is not None:  # LEAVE
            if mtype == "error":
                request.waiter.fail(lambda: ServerError(message, room=room))
            else:
                request.waiter.succeed()
        self._changed()

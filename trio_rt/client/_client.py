"""`WebSocketClient`: the client's public face. It checks its options, holds the parts and
answers the app's calls; the work is theirs:

- `ClientCore` (trio_rt/client/_state.py, sans-IO): rooms, positions, subscriptions, requests
  and the outbox; what each server message means and what to write next.
- `Inbox` (trio_rt/client/_sync.py over `ReceiveBuffer`): the receive buffer and its policy.
- `Supervisor` (trio_rt/client/_supervisor.py): the main task that connects, runs each
  connection's `Session` (trio_rt/client/_session.py: reader, writer, heartbeat, refresher),
  reconnects and emits the events.

Every part wakes the tasks waiting on the client through one `Signal` ("something changed";
each waiter re-checks its own condition).
"""

from __future__ import annotations

import contextlib
import random
import ssl as ssl_module
import uuid
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self

import trio

from ._backoff import Backoff
from ._buffers import ClientOutbox, ReceiveBuffer
from ._completion import Completion
from ._errors import QueueFull
from ._fatal import default_is_fatal
from ._options import ClientOptions
from ._positions import Position
from ._queries import PRESENCE_REPLIES, PRESENCE_STATS_REPLIES
from ._state import ClientCore
from ._supervisor import Supervisor
from ._sync import Inbox, Signal, raise_single, wait_for
from ._types import (
    ClientState,
    ClientStats,
    ConnectHook,
    EventType,
    HeadersLike,
    HeadersProvider,
    L,
    Listener,
    Message,
    OverflowPolicy,
    ReceiveOverflowPolicy,
    TokenProvider,
)
from ._wire import encode

__all__ = ["WebSocketClient"]


class WebSocketClient:
    """A trio_rt client that stays connected: it reconnects, re-joins rooms and queues messages.

    Use it as an async context manager; the connection is made in the background::

        async with WebSocketClient("ws://127.0.0.1:3001/") as client:
            await client.wait_connected()        # optional
            await client.join_room("chat:general")
            await client.send({"type": "chat_message", "payload": {...}})
            async for message in client:
                ...

    Lifetime: ``async with`` opens a nursery that runs the connection supervisor (and, while
    connected, a reader and a writer task). Leaving the block normally calls :meth:`aclose`
    (flush, then close handshake with code 1000). Leaving it with an exception, or being
    cancelled, cancels the background tasks at once and drops the TCP connection. Either way no
    task started by the client outlives the block. An exception raised by an event listener
    stops the client and propagates out of the block.

    Reconnection: after a lost connection (and after a failed first attempt) the client waits
    ``Backoff(initial_delay, max_delay, multiplier, jitter).delay(n)`` with ``n`` = 0, 1, 2...
    between attempts; ``n`` and the attempt counter reset after every successful connection.
    After ``max_attempts`` consecutive failed attempts (``None``: never) or a fatal error (see
    ``is_fatal``, default :func:`default_is_fatal`), the client closes: iteration and
    :meth:`receive` raise :class:`ClientClosed` whose ``error`` is the last error. A ``503``
    or ``429`` with a ``Retry-After`` header lengthens the next delay up to ``max_delay``.

    A connection counts as successful once the server's ``welcome`` arrived and every remembered
    room was joined again (or refused: ``rejoin_failed`` event), all within ``open_timeout``.

    Parameters:
        url: ``ws://`` or ``wss://`` URL of the trio_rt server, or a non-empty sequence of URLs
            (servers of one deployment): each attempt after a failed attempt or a lost
            connection goes to the next URL, round-robin.
        url_index: with several URLs, the index of the first one to try; ``None`` (default)
            picks one at random (with ``rng``), which spreads clients over the servers.
        initial_delay, max_delay, multiplier, jitter: the :class:`Backoff` schedule.
        max_attempts: consecutive failed attempts before giving up; ``None`` retries forever.
        rng: the random generator of the jitter (seed it for reproducible delays).
        queue_size: capacity of the outbox, in application messages (room operations don't
            count).
        overflow: what :meth:`send` does when the outbox is full and the client is not
            connected: ``"raise"`` :class:`QueueFull` (default), ``"drop_oldest"`` queued message,
            or ``"wait"`` for room. While connected, :meth:`send` always waits (backpressure).
        receive_buffer: capacity of the receive buffer, in messages (>= 1). The reader reads
            the socket all the time; when the app falls this many messages behind, the
            ``receive_overflow`` policy applies.
        receive_overflow: ``"reconnect"`` (default): keep every message received, drop the
            connection (:class:`ReceiveOverflow`, ``stats.overflows``) and reconnect once the
            app has read the buffer down to half; rooms with history and table subscriptions
            then recover what was missed (other messages sent meanwhile are lost, as when the
            server drops a slow consumer). ``"drop_oldest"``: stay connected and discard the
            oldest unread message (``stats.receive_dropped``). ``"wait"``: stop reading until
            the app makes room (backpressure up to the server, nothing dropped); the
            heartbeat then drops a connection left unread for longer than ``ping_timeout``,
            so it needs ``ping_interval`` and ``ping_timeout``.
        headers: extra HTTP headers for the handshake: a mapping, or a callable (sync or async)
            returning one, called before every connection attempt.
        token: a bearer token (JWT) for the handshake: a string, or a callable (sync or async)
            returning one, called before every connection attempt and sent as
            ``Authorization: Bearer <token>`` (do not also set that header in ``headers``).
        refresh_margin: with a callable ``token``, seconds before the current token's ``exp``
            (read from the token, unverified) at which the client calls the provider again and
            sends the fresh token in-band (``refresh``), so the server does not close the
            connection with 4004. ``None`` disables in-band refresh (a 4004 close still
            reconnects with a fresh token).
        on_connect: hook called (sync or async) with a :class:`ConnectInfo` after every welcome,
            once the rooms' join requests are sent; the messages it returns are sent right
            away, before the outbox (e.g. a request to replay missed messages).
        is_fatal: decides which errors stop the client instead of reconnecting.
        compression: negotiate permessage-deflate.
        open_timeout: seconds allowed for one attempt: ``headers`` provider, TCP/TLS and
            WebSocket handshakes, welcome, room rejoins and ``on_connect``; ``None``: no limit.
        close_timeout: seconds allowed for flushing the outbox on close, and for the closing
            handshake; then the TCP connection is closed whatever its state, so
            :meth:`aclose` returns within ``2 * close_timeout`` seconds.
        ping_interval, ping_timeout: the client's liveness check: a WebSocket ping every
            ``ping_interval`` seconds; when its pong has not arrived ``ping_timeout`` seconds
            later (``None``: no limit) the client drops the TCP connection
            (:class:`HeartbeatTimeout`) and reconnects. ``ping_interval=None`` disables it.
        max_size: largest incoming message, in bytes (``None``: no limit).
        ssl: TLS context for ``wss://``.
        proxy: as websockets: ``True`` uses the system's proxy settings, ``None`` none, or a URL.

    Invalid settings raise one ``ValueError`` naming each of them (a URL that is not a string
    ``TypeError``, one websockets cannot parse ``InvalidURI``).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        url_index: int | None = None,
        initial_delay: float = 0.5,
        max_delay: float = 20.0,
        multiplier: float = 2.0,
        jitter: float = 0.5,
        max_attempts: int | None = None,
        rng: random.Random | None = None,
        queue_size: int = 1000,
        overflow: OverflowPolicy = "raise",
        receive_buffer: int = 1000,
        receive_overflow: ReceiveOverflowPolicy = "reconnect",
        headers: HeadersLike | HeadersProvider | None = None,
        token: str | TokenProvider | None = None,
        refresh_margin: float | None = 30.0,
        on_connect: ConnectHook | None = None,
        is_fatal: Callable[[BaseException], bool] = default_is_fatal,
        compression: bool = True,
        open_timeout: float | None = 10.0,
        close_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        max_size: int | None = 2**20,
        ssl: ssl_module.SSLContext | None = None,
        proxy: str | Literal[True] | None = True,
    ) -> None:
        self._rng = rng if rng is not None else random.Random()
        options = ClientOptions(
            urls=(url,) if isinstance(url, str) else tuple(url),
            url_index=url_index,
            max_attempts=max_attempts,
            queue_size=queue_size,
            overflow=overflow,
            receive_buffer=receive_buffer,
            receive_overflow=receive_overflow,
            headers=headers,
            token=token,
            refresh_margin=refresh_margin,
            on_connect=on_connect,
            is_fatal=is_fatal,
            compression=compression,
            open_timeout=open_timeout,
            close_timeout=close_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            max_size=max_size,
            ssl=ssl,
            proxy=proxy,
        )
        backoff = Backoff(initial_delay, max_delay, multiplier, jitter)
        self.stats = ClientStats()
        self._changed = Signal()
        self._core = ClientCore(
            ClientOutbox(queue_size, overflow, self.stats), self.stats, self._changed.fire
        )
        self._inbox = Inbox(
            ReceiveBuffer(receive_buffer, receive_overflow, self.stats), self._changed
        )
        self._supervisor = Supervisor(
            options, backoff, self._rng, self._core, self._inbox, self._changed, self.stats
        )
        self._nursery_cm: contextlib.AbstractAsyncContextManager[trio.Nursery] | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        """Start the background supervisor; returns at once (the client is CONNECTING)."""
        if self._nursery_cm is not None:
            raise RuntimeError("a WebSocketClient can be entered only once")
        cm = trio.open_nursery()
        nursery = await cm.__aenter__()
        self._nursery_cm = cm
        nursery.start_soon(self._supervisor.run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Normal exit: :meth:`aclose` (graceful). Exit with an exception or cancellation: cancel
        the background tasks at once. Waits for every background task to end. Re-raises the
        block's exception unchanged (not wrapped in an ExceptionGroup), or the exception of an
        event listener that stopped the client."""
        cm = self._nursery_cm
        assert cm is not None, "__aexit__ without __aenter__"
        if exc is None:
            try:
                await self.aclose()
            except BaseException as close_error:  # cancelled while closing gracefully
                self._supervisor.abort()
                exc_type, exc, tb = type(close_error), close_error, close_error.__traceback__
        else:
            self._supervisor.abort()
        try:
            return await cm.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            raise_single(group)

    async def aclose(self) -> None:
        """Close gracefully and wait until the client is CLOSED. Idempotent.

        From now on :meth:`send`, :meth:`join_room` and :meth:`leave_room` raise
        :class:`ClientClosed`. If connected: the outbox is flushed (at most ``close_timeout``
        seconds; incoming messages are still buffered meanwhile), then the WebSocket is closed
        with code 1000 (closing handshake bounded by ``close_timeout``; what arrives during it is
        read and dropped, so unread messages cannot stall it); then the TCP connection and
        websockets' tasks are closed whatever state they are in, so this returns within
        ``2 * close_timeout`` seconds even when the server is dead. If connecting or waiting
        to reconnect: that is cancelled. Messages still queued are discarded
        (``stats.discarded``); pending ``join_room()`` and ``subscribe()`` calls raise
        :class:`ClientClosed`. The iterator yields what is already buffered, then stops.

        Called from an event listener, it requests the close and returns without waiting (the
        listener runs in the task that does the closing).
        """
        if self._nursery_cm is None:
            raise RuntimeError("the client is not running: use 'async with WebSocketClient(...)'")
        self._supervisor.request_close()
        if self._supervisor.in_own_task():
            await trio.lowlevel.checkpoint()
            return
        await self._supervisor.wait_closed()

    # -- public properties --------------------------------------------------------------------
    @property
    def state(self) -> ClientState:
        return self._supervisor.state

    @property
    def urls(self) -> tuple[str, ...]:
        """Every URL the client may connect to, in round-robin order."""
        return self._supervisor.urls

    @property
    def url(self) -> str:
        """The URL of the current (or next) connection attempt."""
        return self._supervisor.url

    @property
    def welcome(self) -> Message | None:
        """The latest ``welcome`` message (``None`` before the first connection). Welcomes are
        not delivered to the iterator."""
        return self._supervisor.welcome

    @property
    def connection_id(self) -> str | None:
        """``connection_id`` of the latest welcome (a new one after every reconnect)."""
        welcome = self._supervisor.welcome
        if welcome is None:
            return None
        value = welcome.get("connection_id")
        return value if isinstance(value, str) else None

    @property
    def backoff(self) -> Backoff:
        """The reconnect schedule (read before each retry)."""
        return self._supervisor.backoff

    @backoff.setter
    def backoff(self, backoff: Backoff) -> None:
        self._supervisor.backoff = backoff

    @property
    def max_attempts(self) -> int | None:
        """Consecutive failed attempts before giving up; ``None`` retries forever."""
        return self._supervisor.max_attempts

    @max_attempts.setter
    def max_attempts(self, max_attempts: int | None) -> None:
        self._supervisor.max_attempts = max_attempts

    @property
    def refetch_limit(self) -> int:
        """How many messages to ask for when a room's recovery is not possible (50)."""
        return self._core.refetch_limit

    @refetch_limit.setter
    def refetch_limit(self, limit: int) -> None:
        self._core.refetch_limit = limit

    @property
    def rooms(self) -> frozenset[str]:
        """Rooms the client is in or joining; they are joined again after every reconnect."""
        return self._core.rooms

    @property
    def pending(self) -> int:
        """Application messages queued and not written yet."""
        return self._core.outbox.queued

    # -- events -------------------------------------------------------------------------------
    def on(self, event: EventType) -> Callable[[L], L]:
        """Decorator registering a listener: ``@client.on("connected")``.

        Listeners (``def`` or ``async def``, taking a :class:`ClientEvent`) are called by the
        supervisor task, in registration order, and awaited before the client goes on: events
        arrive in order (``connected``, ``disconnected``, ``reconnecting``..., ``connected``...).
        Keep them short. An exception raised by a listener stops the client and propagates out
        of ``async with``.
        """

        def register(fn: L) -> L:
            self.add_listener(event, fn)
            return fn

        return register

    def add_listener(self, event: EventType, fn: Listener) -> None:
        self._supervisor.add_listener(event, fn)

    def remove_listener(self, event: EventType, fn: Listener) -> None:
        self._supervisor.remove_listener(event, fn)

    # -- sending ------------------------------------------------------------------------------
    async def send(self, message: Mapping[str, Any]) -> None:
        """Queue ``message`` (a JSON-serializable mapping with a string ``type``) for the server.

        Returns once queued, not once written (see :meth:`flush`). Messages are written in the
        order ``send()`` was called, after the rooms are rejoined on a new connection.
        Serialization happens here: ``TypeError`` / ``ValueError`` for a bad message.

        When the outbox is full: while CONNECTED, wait for room (backpressure); otherwise apply
        the ``overflow`` policy: ``"raise"`` :class:`QueueFull`, ``"drop_oldest"`` (the oldest
        queued message is discarded, counted in ``stats.dropped``), ``"wait"``.

        Raises :class:`ClientClosed` once the client is closing or closed. Cancelling a
        ``send()`` that waits for room leaves nothing queued.
        """
        text = encode(message)
        await trio.lowlevel.checkpoint_if_cancelled()
        outbox = self._core.outbox
        while True:
            self._raise_if_closing()
            if not outbox.full:
                break
            action = outbox.when_full(connected=self.state is ClientState.CONNECTED)
            if action == "wait":
                await self._changed.wait()
            elif action == "raise":
                raise QueueFull(
                    f"{outbox.queued} messages are waiting for the connection (queue_size)"
                )
            else:
                outbox.drop_oldest()
        outbox.put_message(text)
        self._changed.fire()
        await trio.lowlevel.cancel_shielded_checkpoint()  # queued: do not report a cancellation

    async def flush(self) -> None:
        """Wait until every message queued by :meth:`send` before this call has left the
        outbox: written to the socket, or dropped / lost per the delivery policy. While
        disconnected this waits for the reconnection. Raises :class:`ClientClosed` if the client
        closes first."""
        outbox = self._core.outbox
        target = outbox.enqueued_seq
        while not outbox.settled(target):
            if self.state is ClientState.CLOSED:
                raise self._supervisor.closed_exception()
            await self._changed.wait()
        await trio.lowlevel.checkpoint()

    # -- rooms --------------------------------------------------------------------------------
    async def join_room(self, room: str) -> None:
        """Join ``room`` and remember it: it is joined again after every reconnect.

        Returns when the server confirmed (``room_joined``); if the client is disconnected that
        is after the next successful connection. Raises :class:`ServerError` when the server
        refuses (``room_full``, ``not_permitted``, ``invalid_field``...): the room is then
        forgotten. Raises :class:`ClientClosed` if the client closes first. Idempotent: joining
        a room already joined returns at once. Cancelling the call does not cancel the join.
        The confirmation is consumed: it is not delivered to the iterator.
        """
        if not isinstance(room, str) or not room:
            raise ValueError("room must be a non-empty string")
        self._raise_if_closing()
        await wait_for(self._core.join(room))

    async def leave_room(self, room: str) -> None:
        """Leave ``room`` and forget it (it will not be rejoined).

        If the current connection joined it, sends ``leave_room`` (after the messages already
        queued) and returns when the server confirmed with ``room_left`` or the connection
        ended; otherwise returns at once. A pending :meth:`join_room` for the room raises
        :class:`ClientError`. Raises :class:`ServerError` if the server refuses, and
        :class:`ClientClosed` if the client is closing or closed.
        """
        self._raise_if_closing()
        done = self._core.leave(room)
        if done is None:
            await trio.lowlevel.checkpoint()
            return
        await wait_for(done)

    # -- presence -----------------------------------------------------------------------------
    async def presence(self, room: str) -> Message:
        """Who is in `room`, across servers: the server's ``presence`` reply, ``{"room",
        "members": [{"user_id", "connections", "info"}], "users", "connections",
        "version"}`` (docs/presence.md). The client must be in the room (or hold a
        ``presence`` grant). Raises :class:`ServerError` (``not_in_room``, ``too_large`` with
        the counts in ``reply``, ``unknown_type`` when the server has no presence) and
        :class:`ClientClosed`. Asked again on the next connection if this one ends first."""
        return await self._query("presence", room, PRESENCE_REPLIES)

    async def presence_stats(self, room: str) -> Message:
        """How many are in `room`, across servers: ``{"room", "users", "connections",
        "version"}``. Raises as :meth:`presence`. Join/leave events of rooms that have them
        arrive as ``presence_diff`` messages (:meth:`receive`)."""
        return await self._query("presence_stats", room, PRESENCE_STATS_REPLIES)

    async def _query(self, mtype: str, room: str, replies: frozenset[str]) -> Message:
        if not isinstance(room, str) or not room:
            raise ValueError("room must be a non-empty string")
        self._raise_if_closing()
        query = self._core.query({"type": mtype, "room": room}, replies)
        await wait_for(query.done)
        assert query.reply is not None
        return query.reply

    # -- acknowledged publishes ---------------------------------------------------------------
    async def publish(self, room: str, data: Any, *, id: str | None = None) -> Message:
        """Publish ``data`` into ``room`` and wait for the server's ``ack``; returns it
        (``{"type": "ack", "room", "position", "id"}``: ``position`` is where the message was
        stored, None in a room without history). The server must run a ``Publisher``
        (docs/protocol.md, "Acknowledged publishes").

        ``id`` names the message (default: a random UUID). Until the server answers, the
        publish is written again, with the same id, on every new connection: the server stores
        and delivers it once (within its idempotency window; per user, so anonymous clients
        are deduplicated only within one connection). Sent while disconnected, it is queued
        and written after the rooms are rejoined. Raises :class:`ServerError` when the server
        refuses it (``not_in_room``, ``not_permitted``, ``invalid_field``) or cannot do it now
        (``unavailable``: call ``publish`` again with the same ``id``), :class:`ClientClosed`
        if the client closes first, ``ValueError`` if ``id`` is already waiting for its ack.
        Cancelling the call does not cancel the publish: it is still written until answered.
        """
        if not isinstance(room, str) or not room:
            raise ValueError("room must be a non-empty string")
        self._raise_if_closing()
        pending = self._core.publish(room, data, id if id is not None else uuid.uuid4().hex)
        await wait_for(pending.waiter)
        assert pending.ack is not None
        return pending.ack

    @property
    def unacknowledged(self) -> int:
        """Publishes waiting for their ack (queued, in flight, or to be written again)."""
        return self._core.unacknowledged

    # -- positions and subscriptions ------------------------------------------------------------
    def position(self, room: str) -> Position | None:
        """The last stream position seen in `room` (rooms with history), sent as ``since``
        when the room is joined again after a reconnect."""
        return self._core.position(room)

    async def subscribe(self, table: str, filters: Mapping[str, Any] | None = None) -> str:
        """Subscribe to the changes of `table` matching `filters`; returns the subscription's
        key once it is live on the server.

        Returns when the server's ``subscribed`` reply arrived: the subscription is registered
        and, for a renewal, its replay is done. While the client is disconnected that is after
        the next successful connection. Raises :class:`ServerError` when the server refuses
        (``not_permitted``, ``invalid_field``, ``limit_exceeded``...): the subscription is then
        forgotten and the refusal is not delivered as a message. Raises :class:`ClientClosed`
        if the client closes first, :class:`ClientError` if :meth:`unsubscribe` is called
        first. Cancelling the call does not cancel the subscription (the key is lost to the
        caller then: :attr:`subscriptions` lists it).

        The subscription is renewed after every reconnect, from the position of the last change
        received (changes missed meanwhile are replayed, or a ``recovery_failed`` event says
        they cannot be). ``data_update`` messages are delivered with an added ``key``, replayed
        ones included.
        """
        key, live = self._subscribe(table, filters, awaited=True)
        await wait_for(live)
        return key

    def subscribe_nowait(self, table: str, filters: Mapping[str, Any] | None = None) -> str:
        """Like :meth:`subscribe`, but returns the key at once, without waiting for the server
        (what ``subscribe()`` did before it became a coroutine).

        A refusal arrives as an ``error`` message with the same ``key`` (the subscription is
        then forgotten), as does the refusal of a renewal after a reconnect.
        """
        key, _ = self._subscribe(table, filters, awaited=False)
        return key

    def _subscribe(
        self, table: str, filters: Mapping[str, Any] | None, *, awaited: bool
    ) -> tuple[str, Completion]:
        if not isinstance(table, str) or not table:
            raise ValueError("table must be a non-empty string")
        self._raise_if_closing()
        return self._core.subscribe(table, filters, awaited=awaited)

    def unsubscribe(self, key: str) -> None:
        """Forget a subscription; the server is told if the current connection holds it (or
        as soon as its pending ``subscribed`` reply arrives). Changes of it still in flight
        are dropped. A pending :meth:`subscribe` for it raises :class:`ClientError`. Unknown
        keys are ignored."""
        self._core.unsubscribe(key)

    @property
    def subscriptions(self) -> Mapping[str, tuple[str, dict[str, Any]]]:
        """key -> (table, filters) of the subscriptions kept across reconnects."""
        return self._core.subscriptions

    # -- receiving ----------------------------------------------------------------------------
    async def receive(self) -> Message:
        """The next server message, in arrival order (the ``welcome`` and the replies consumed
        by :meth:`join_room` / :meth:`leave_room` excepted).

        Waits while none is buffered, across reconnections. Once the client is closed and the
        buffer is empty, raises :class:`ClientClosed` (its ``error`` says why; ``None`` after a
        normal close)."""
        message = await self._inbox.take()
        if message is None:
            supervisor = self._supervisor
            raise supervisor.closed_exception() from supervisor.close_error
        return message

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        """Like :meth:`receive`, but the iteration simply ends after a normal close; it raises
        :class:`ClientClosed` when a fatal error or exhausted reconnection closed the client."""
        message = await self._inbox.take()
        if message is None:
            supervisor = self._supervisor
            if supervisor.close_error is None:
                raise StopAsyncIteration
            raise supervisor.closed_exception() from supervisor.close_error
        return message

    async def wait_connected(self) -> None:
        """Wait until the client is CONNECTED (returns at once if it is).

        Raises :class:`ClientClosed` if the client closes first (e.g. fatal error, or
        ``max_attempts`` failed attempts)."""
        while self.state is not ClientState.CONNECTED:
            if self.state is ClientState.CLOSED:
                raise self._supervisor.closed_exception()
            await self._changed.wait()
        await trio.lowlevel.checkpoint()

    # -- helpers ------------------------------------------------------------------------------
    def _raise_if_closing(self) -> None:
        if self._nursery_cm is None:
            raise RuntimeError("the client is not running: use 'async with WebSocketClient(...)'")
        if self._supervisor.closing:
            raise self._supervisor.closed_exception()

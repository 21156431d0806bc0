"""`Session`: the I/O of one WebSocket connection, from the welcome to its end.

It only moves frames: the reader decodes each one and hands it to the core
(`ClientCore.receive`), buffers what the core returns for the app and emits the events it
reports; the writer takes the outbox's items in order and writes what the core renders for
them; the heartbeat pings; the refresher sends fresh tokens in-band. What a message means and
what to write next is decided in trio_rt/client/_state.py.

The supervisor (trio_rt/client/_supervisor.py) opens the WebSocket, starts these tasks in the
connection's nursery and cancels that nursery when the session ends, however it ends.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import time
from typing import Protocol

import trio
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.trio.client import ClientConnection

from ._errors import ClientError, HeartbeatTimeout, ProtocolViolation, ReceiveOverflow
from ._options import ClientOptions
from ._state import ClientCore, ConnectionBook
from ._sync import Inbox, Signal
from ._types import ClientEvent, ClientStats, ConnectInfo, Message, TokenProvider
from ._wire import decode, encode, token_exp

__all__ = ["Session", "SessionHost", "resolve_token"]

log = logging.getLogger("trio_rt.client")


class SessionHost(Protocol):
    """What a session uses of the client that runs it (the supervisor)."""

    core: ClientCore
    inbox: Inbox
    changed: Signal
    stats: ClientStats
    options: ClientOptions

    @property
    def url(self) -> str: ...

    @property
    def closing(self) -> bool: ...

    async def emit(self, event: ClientEvent) -> None: ...


async def resolve_token(provider: str | TokenProvider | None) -> str | None:
    """The token for the next handshake or refresh: the string, or the provider's answer."""
    if provider is None or isinstance(provider, str):
        return provider
    result = provider()
    token = await result if inspect.isawaitable(result) else result
    if not isinstance(token, str) or not token:
        raise TypeError("the token provider must return a non-empty string")
    return token


class Session:
    """One WebSocket connection and its tasks. Its end is recorded once (`ended`): by whichever
    task meets it first (`end`), or by the client giving up on it (`drop`)."""

    def __init__(
        self,
        host: SessionHost,
        ws: ClientConnection,
        scope: trio.CancelScope,
        book: ConnectionBook,
    ) -> None:
        self._host = host
        self._core = host.core
        self._changed = host.changed
        self._stats = host.stats
        self._options = host.options
        self.ws = ws
        # The scope of everything tied to this connection: the session's tasks and websockets'
        # own (frame reader). Cancelling it drops the connection whatever state websockets is in.
        self.scope = scope
        self.book = book
        self.ended = False  # the reader saw the end of the connection, or the client dropped it
        self.close_exc: ConnectionClosed | None = None
        self.drop_error: ClientError | None = None  # why the client dropped it
        self.close_requested = False  # aclose(): flush the outbox, then close with 1000
        self.writing = False

    def end(self, exc: ConnectionClosed) -> None:
        """A task of the session met the end of the connection. The reader usually sees it
        first, but not while it waits for the app (receive_overflow="wait"): whoever meets
        it ends the session. (It does not cancel anything: a closing handshake in progress
        goes on, within its bound.)"""
        if not self.ended:
            self.close_exc = exc
            self.ended = True
            self._changed.fire()

    def drop(self, error: ClientError) -> None:
        """The client gives up on this connection: cancel everything tied to it (the TCP
        connection is closed on the way out). `error` becomes the attempt's error."""
        if not self.ended:
            self.drop_error = error
            self.ended = True
        self._changed.fire()
        self.scope.cancel()

    # -- before the session is live -------------------------------------------------------------
    async def receive_welcome(self) -> Message:
        """Read up to the welcome. ``error`` messages before it are delivered to the app (the
        server may explain a close that follows); anything else violates the protocol."""
        while True:
            raw = await self.ws.recv()
            message = decode(raw)
            if message is None:
                raise ProtocolViolation(f"expected a welcome message, got {raw[:200]!r}")
            self._stats.received += 1
            if message["type"] == "welcome":
                return message
            if message["type"] != "error":
                raise ProtocolViolation(
                    f"expected a welcome message, got a {message['type']!r} message"
                )
            self._host.inbox.put(message)

    async def restore(self, welcome: Message, number: int) -> None:
        """Rejoin the remembered rooms, renew the subscriptions, send the on_connect messages,
        then await the rooms' replies."""
        ws = self.ws
        for frame in self._core.restore_frames(self.book):
            await ws.send(frame)
        on_connect = self._options.on_connect
        if on_connect is not None:
            result = on_connect(ConnectInfo(welcome, number, self.book.rejoined))
            messages = await result if inspect.isawaitable(result) else result
            for message in messages:
                await ws.send(encode(message))
        while not self.ended and self.book.restoring:
            await self._changed.wait()

    # -- the session's tasks --------------------------------------------------------------------
    async def read_loop(self) -> None:
        """Read every frame as soon as it arrives, whatever the app does: replies and positions
        are handled here, the rest goes to the receive buffer (which never makes this wait).
        So websockets never has a reason to stop reading the socket for long, and pongs,
        close frames and the end of the connection are always seen."""
        ws = self.ws
        host = self._host
        inbox = host.inbox
        try:
            while True:
                raw = await ws.recv()
                message = decode(raw)
                if message is None:
                    self._stats.invalid += 1
                    log.warning("dropping an invalid message from %s: %r", host.url, raw[:200])
                    continue
                self._stats.received += 1
                full = False
                for one in self._core.receive(self.book, message):
                    full = inbox.put(one) or full
                for room, reason in self._core.take_recovery_failures():
                    await host.emit(ClientEvent("recovery_failed", room=room, reason=reason))
                if full and inbox.buffer.policy == "wait":
                    # Backpressure: websockets stops reading the socket too. Pongs are not
                    # read meanwhile: the heartbeat drops a connection left unread too long.
                    await inbox.wait_for_app(lambda: host.closing)
                elif full:
                    # Everything received is kept (its position too): the reconnect recovers
                    # from there once the app has caught up.
                    self._stats.overflows += 1
                    log.warning(
                        "the app is %d messages behind: dropping the connection to %s",
                        len(inbox),
                        host.url,
                    )
                    self.drop(ReceiveOverflow(f"{len(inbox)} messages unread"))
                    return
        except ConnectionClosed as exc:
            # Only the end of the connection sets `ended` here; a cancelled reader does not.
            self.end(exc)

    async def write_loop(self) -> None:
        """Write the outbox in order. Each message is written at most once: it is removed from
        the outbox before the write, and not requeued if the write fails."""
        ws = self.ws
        outbox = self._core.outbox
        while True:
            if not outbox:
                await self._changed.wait()
                continue
            if ws.state is not State.OPEN:
                return  # the reader sees the end of the connection and ends the session
            item = outbox.pop()
            text = self._core.render(self.book, item)
            if text is None:
                self._changed.fire()
                continue
            self.writing = True
            written = False
            try:
                await ws.send(text)
                written = True
            except ConnectionClosed as exc:
                self.end(exc)
                return
            finally:
                self.writing = False
                outbox.settle(item, written=written)
                self._changed.fire()

    async def heartbeat(self) -> None:
        """Ping every ping_interval; drop the connection when a pong is ping_timeout late.

        This does not rely on the app reading, nor on websockets' keepalive (whose timeout
        path writes a close frame first, which can wait forever on a dead peer)."""
        interval = self._options.ping_interval
        assert interval is not None
        timeout = self._options.ping_timeout
        limit = math.inf if timeout is None else timeout
        ws = self.ws
        while True:
            await trio.sleep(interval)
            with trio.move_on_after(limit) as waited:
                try:
                    pong = await ws.ping()
                    await pong.wait()
                except ConnectionClosed as exc:
                    self.end(exc)
                    return
            if waited.cancelled_caught:
                self._stats.heartbeat_timeouts += 1
                log.warning(
                    "no pong from %s within %ss: dropping the connection", self._host.url, limit
                )
                self.drop(HeartbeatTimeout(f"no pong within ping_timeout={limit}s"))
                return

    async def refresh_loop(self) -> None:
        """While connected: shortly before the token expires, get a fresh one and send it
        in-band. Stops after a refusal (the server then closes with 4004 at expiry and the
        reconnect takes a fresh token) or when the token has no readable `exp`."""
        margin = self._options.refresh_margin
        assert margin is not None
        book = self.book
        while True:
            exp = book.token_expires_at
            if exp is None:
                return
            await trio.sleep(max(0.0, exp - margin - time.time()))
            if book.token_expires_at != exp:
                continue  # moved meanwhile
            try:
                token = await resolve_token(self._options.token)
            except Exception:
                log.exception("the token provider failed; not refreshing in-band")
                book.token_expires_at = None
                return
            assert token is not None
            new_exp = token_exp(token)
            if new_exp is None or new_exp <= exp:
                log.warning("the token provider returned no fresher token; not refreshing")
                book.token_expires_at = None
                return
            try:
                await self.ws.send(self._core.refresh_request(book, token, new_exp))
            except ConnectionClosed as exc:
                self.end(exc)
                return
            self._stats.refreshes += 1

    # -- the end --------------------------------------------------------------------------------
    async def close_gracefully(self) -> None:
        """Closing handshake with 1000, reading (and dropping) what arrives meanwhile so the
        server's close frame is not stuck behind unread messages."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._discard_incoming)
            await self.ws.aclose()
            nursery.cancel_scope.cancel()

    async def _discard_incoming(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self.ws.recv()

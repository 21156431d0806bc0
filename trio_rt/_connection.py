"""One client connection: its reader, writer and heartbeat, all inside the connection's nursery.

App code sees `Connection`, never a websockets object.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import trio
from websockets.exceptions import ConnectionClosed
from websockets.protocol import OPEN
from websockets.trio.server import ServerConnection

from ._direct_stream import DirectStream
from ._outbox import Offer, OutboundMessage, Outbox
from ._protocol import CloseCode, encode

if TYPE_CHECKING:
    from ._manager import WebSocketManager

__all__ = ["Connection", "Request"]

log = logging.getLogger("trio_rt.connection")


@dataclass(frozen=True, slots=True)
class Request:
    """The opening handshake as the server saw it."""

    path: str  # without the query string
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]  # case-insensitive lookup; repeated headers joined with ", "
    remote_address: tuple[str, int] | None
    subprotocols: tuple[str, ...]

    @classmethod
    def from_websockets(cls, ws: ServerConnection) -> Request:
        assert ws.request is not None
        parts = urlsplit(ws.request.path)
        headers = ws.request.headers
        subprotocols = tuple(
            p.strip()
            for value in headers.get_all("Sec-WebSocket-Protocol")
            for p in value.split(",")
            if p.strip()
        )
        try:
            # DirectStream and SocketStream both expose the trio socket as `.socket`.
            remote = ws.stream.socket.getpeername()  # type: ignore[attr-defined]
            peer = (str(remote[0]), int(remote[1]))
        except Exception:  # a socket that died during the handshake
            peer = None
        return cls(
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=_Headers(headers),
            remote_address=peer,
            subprotocols=subprotocols,
        )


class _Headers(Mapping[str, str]):
    """A read-only, case-insensitive view of the handshake headers."""

    def __init__(self, headers: Any) -> None:
        self._h = headers

    def __getitem__(self, key: str) -> str:
        values = self._h.get_all(key)
        if not values:
            raise KeyError(key)
        return ", ".join(values)

    def __iter__(self) -> Any:
        return iter(dict.fromkeys(k.lower() for k in self._h))

    def __len__(self) -> int:
        return len(set(k.lower() for k in self._h))


class Connection:
    """A client connection, from its handshake to its end.

    Attributes for the app: `id` (unique, also across servers), `user_id` (set it in the
    connection handler, e.g. from a token), `state` (a dict for anything else), `request`
    (path, query, headers, peer of the handshake), `expires_at` (Unix time when the server
    closes the connection with 4004 unless a `refresh` moves it; None: never; set by
    `JWTAuthenticator`, or by the app's connection handler).

    Sending never waits on the client: `send` serializes the message and queues it in the
    connection's bounded outbox; the connection's writer task writes it. When the outbox is full
    the manager's slow-consumer policy applies.
    """

    def __init__(self, manager: WebSocketManager, ws: ServerConnection) -> None:
        self.id: str = uuid.uuid4().hex
        self.user_id: str | None = None
        self.state: dict[str, Any] = {}
        # Unix time after which the server no longer accepts this connection's credentials
        # (set by JWTAuthenticator; a `refresh` moves it). The manager closes it then (4004).
        self.expires_at: float | None = None
        self.request: Request = Request.from_websockets(ws)
        self._manager = manager
        self._ws = ws
        o = manager.options
        self._outbox = Outbox(o.outbox_size, o.outbox_max_bytes, o.slow_consumer_policy)
        self._writer_wakeup = trio.lowlevel.ParkingLot()
        self._writer_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._torn_write = False  # a write was cancelled midway: the stream is unusable
        self._direct: DirectStream | None = None  # set once open, when frames can go direct
        self._in_flight = False  # the writer holds a batch it has not finished writing
        self._close_code: int | None = None  # set when the server decides to close
        self._close_reason = ""
        self._closed = trio.Event()
        self._writer_done = trio.Event()
        self._stream_closed = trio.Event()
        self._closing = False
        self.opened = False
        self._accepted = False  # the connection handlers let it in: disconnect handlers will run
        # room -> live messages held while the room's missed messages are replayed (recovery)
        self._recovering: dict[str, list[tuple[int, OutboundMessage]]] | None = None
        self.messages_in = 0
        self.messages_out = 0

    def __repr__(self) -> str:
        return f"<Connection {self.id[:8]} user={self.user_id!r}>"

    # -- public --------------------------------------------------------------------------------
    @property
    def rooms(self) -> frozenset[str]:
        """Rooms this connection is a member of."""
        return self._manager.rooms_of(self)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def close_code(self) -> int | None:
        """The close code, once the connection is over (1006 when the TCP connection dropped)."""
        if not self._closed.is_set():
            return None
        return self._final_close_code()

    @property
    def outbox_depth(self) -> int:
        return len(self._outbox)

    async def send(self, data: dict[str, Any]) -> None:
        """Queue `data` (JSON-serializable) for this client.

        Returns once queued, not once written. Raises TypeError/ValueError for data JSON cannot
        represent. A message to a closed connection is dropped silently: the disconnect handler
        is where the app learns that a client is gone.
        """
        self.send_encoded(OutboundMessage(encode(data)))
        await trio.lowlevel.checkpoint()

    def send_encoded(self, message: OutboundMessage) -> bool:
        """Queue an already serialized message without waiting. Returns False if not queued.

        When the connection is idle (nothing queued or being written, no compression), the
        frame goes straight to the socket without waking the writer task: the common case of a
        broadcast costs one system call and no task switch.
        """
        direct = self._direct
        if (
            direct is not None
            and not self._outbox
            and not self._in_flight
            and not self._outbox.closed
            and not self._ws.send_lock.locked()
            and self._ws.protocol.state is OPEN
            and direct.try_send(message.frame)
        ):
            if direct.pending:
                self._writer_wakeup.unpark_all()  # the writer flushes what the kernel left
            self.messages_out += 1
            self._manager._stats.messages_out += 1
            return True
        result = self._outbox.offer(message)
        if result is Offer.QUEUED:
            self._writer_wakeup.unpark_all()
            return True
        if result is Offer.OVERFLOW:
            self._manager._stats.slow_consumers += 1
            self._abort(CloseCode.SLOW_CONSUMER, "slow consumer: outbox full")
        elif result is Offer.DROPPED:
            self._manager._stats.dropped_messages += 1
            self._writer_wakeup.unpark_all()
        return False

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close the connection: write what is queued (bounded by the manager's close_timeout),
        then send a close frame with `code`, then wait for the connection to end.

        Idempotent. Returns once the close handshake is over or timed out (also when called
        from this connection's own message handler). The disconnect handler runs after.
        """
        if self._close_code is None:
            self._close_code = code
            self._close_reason = reason
        if self._nursery is None:
            # Still in the handshake (e.g. called from the connection handler): the connection
            # closes as soon as it opens. Or already ending. Nothing to wait for.
            self._outbox.seal()
            await trio.lowlevel.checkpoint()
            return
        self._start_close()
        await self._stream_closed.wait()

    def _close_soon(self, code: int, reason: str) -> None:
        """`close` without waiting (sync): for the manager's own tasks, which must not block on
        one client. Queued messages are still written first."""
        if self._close_code is None:
            self._close_code = code
            self._close_reason = reason
        if self._nursery is None:
            self._outbox.seal()
        else:
            self._start_close()

    # -- lifecycle (called by the manager) ------------------------------------------------------
    async def _run(self) -> None:
        """Serve the open connection until it ends. Owns the reader, writer and heartbeat."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.opened = True
                if isinstance(self._ws.stream, DirectStream) and not self._ws.protocol.extensions:
                    self._direct = self._ws.stream
                nursery.start_soon(self._writer)
                if self._manager.options.heartbeat_interval is not None:
                    nursery.start_soon(self._heartbeat)
                if self._close_code is not None:  # closed during the handshake
                    self._start_close()
                try:
                    await self._reader()
                finally:
                    # The nursery takes no new task from here on: closing is already under way.
                    self._nursery = None
                    nursery.cancel_scope.cancel()
        finally:
            self._outbox.close()
            self._stream_closed.set()
            self._closed.set()

    def _final_close_code(self) -> int:
        if self._close_code is not None:
            return self._close_code
        proto = self._ws.protocol
        if proto.close_rcvd is not None:
            return proto.close_rcvd.code
        if proto.close_sent is not None:
            return proto.close_sent.code
        return CloseCode.ABNORMAL

    async def _reader(self) -> None:
        ws = self._ws
        dispatch = self._manager._dispatch
        while True:
            try:
                frame = await ws.recv()
            except ConnectionClosed:
                return
            self.messages_in += 1
            await dispatch(self, frame)

    async def _writer(self) -> None:
        ws = self._ws
        outbox = self._outbox
        direct = self._direct
        try:
            with trio.CancelScope() as self._writer_scope:
                while True:
                    if not outbox and not (direct is not None and direct.pending):
                        if outbox.closed:  # sealed or aborted, and nothing left to write
                            return
                        await self._writer_wakeup.park()
                        continue
                    batch = outbox.take_all()
                    self._in_flight = True  # direct sends wait until this batch is written
                    try:
                        if ws.protocol.extensions:
                            # permessage-deflate: each connection has its own compressor, so
                            # frames are built here; the whole batch still goes out in one
                            # send_all (websockets' send_context would write frame by frame).
                            async with ws.send_lock:
                                if ws.protocol.state is not OPEN:
                                    return
                                for m in batch:
                                    ws.protocol.send_text(m.payload)
                                data = b"".join(ws.protocol.data_to_send())
                                try:
                                    await ws.stream.send_all(data)
                                except trio.Cancelled:
                                    self._torn_write = True
                                    raise
                        else:
                            data = b"".join([m.frame for m in batch])
                            async with ws.send_lock:
                                if ws.protocol.state is not OPEN:
                                    return
                                try:
                                    await ws.stream.send_all(data)  # pending direct bytes first
                                except trio.Cancelled:
                                    self._torn_write = True
                                    raise
                    finally:
                        self._in_flight = False
                    self.messages_out += len(batch)
                    self._manager._stats.messages_out += len(batch)
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            # The peer is gone; the reader sees it too and ends the connection.
            await trio.aclose_forcefully(ws.stream)
        finally:
            self._writer_done.set()

    async def _heartbeat(self) -> None:
        opts = self._manager.options
        assert opts.heartbeat_interval is not None and opts.heartbeat_timeout is not None
        timeout = opts.heartbeat_timeout
        ws = self._ws
        while True:
            await trio.sleep(opts.heartbeat_interval)
            with trio.move_on_after(timeout) as scope:
                try:
                    pong = await ws.ping()
                except ConnectionClosed:
                    return
                await pong.wait()
            if scope.cancelled_caught:
                self._manager._stats.heartbeat_timeouts += 1
                self._abort(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
                return

    def _start_close(self) -> None:
        """Start closing in the connection's nursery: gracefully, or at once after an abort."""
        if self._closing or self._nursery is None:
            return
        self._closing = True
        if self._outbox.aborted:
            self._nursery.start_soon(self._abort_close)
        else:
            self._outbox.seal()
            self._writer_wakeup.unpark_all()
            self._nursery.start_soon(self._graceful_close)

    async def _graceful_close(self) -> None:
        # The writer empties the sealed outbox and returns; then the close frame goes out.
        with trio.move_on_after(self._manager.options.close_timeout):
            await self._writer_done.wait()
            if not self._torn_write:
                await self._ws.aclose(self._close_code or CloseCode.NORMAL, self._close_reason)
        await trio.aclose_forcefully(self._ws.stream)
        self._stream_closed.set()

    def _abort(self, code: int, reason: str) -> None:
        """Close at once, dropping what is queued (slow consumer, dead peer). Sync and safe to
        call from a broadcast: the closing work runs in the connection's nursery."""
        if self._outbox.aborted:
            return
        if self._close_code is None:
            self._close_code = code
            self._close_reason = reason
        self._outbox.close()
        self._writer_wakeup.unpark_all()
        if self._writer_scope is not None:
            self._writer_scope.cancel()
        if self._nursery is not None and not self._closing:
            self._closing = True
            self._nursery.start_soon(self._abort_close)

    async def _abort_close(self) -> None:
        # A short grace period to get the close code out while the socket still takes it.
        with trio.move_on_after(min(1.0, self._manager.options.close_timeout)):
            await self._writer_done.wait()
            if not self._torn_write and self._ws.protocol.state is OPEN:
                await self._ws.aclose(
                    self._close_code or CloseCode.INTERNAL_ERROR, self._close_reason
                )
        await trio.aclose_forcefully(self._ws.stream)
        self._stream_closed.set()

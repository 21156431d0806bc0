"""One client connection: its reader, its writer when one is needed, its pings; its closing.

App code sees `Connection`, never a websockets object. A connection knows the server only
through `ConnectionHost` (what it calls back: dispatch a frame, count, the flush queue, the
heartbeat schedule, the options), which the manager wires from its parts; its one state is a
`ConnectionState`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, cast
from urllib.parse import parse_qs, urlsplit

import trio
from websockets.exceptions import ConnectionClosed
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.protocol import OPEN
from websockets.trio.server import ServerConnection

from .._core.heartbeat import Beat, HeartbeatSchedule
from .._core.options import ServerOptions
from .._core.outbox import DeflateKey, Offer, OutboundMessage, Outbox
from .._core.protocol import CloseCode, encode
from .flush import FlushQueue
from .sockets import BROKEN, BUSY, CORKED_FULL, PARTIAL, DirectWrites

if TYPE_CHECKING:
    from .sockets import HostedSocket

__all__ = ["Connection", "ConnectionHost", "ConnectionState", "Request"]

log = logging.getLogger("trio_rt.connection")


class ConnectionState(enum.IntEnum):
    """Where a connection is in its life (`Connection.status`); only ever moves forward.

    - CONNECTING: the opening handshake: the connection handlers run, the upgrade is answered.
      Messages sent now are queued; they follow the welcome.
    - OPEN: the WebSocket is open: messages flow both ways.
    - CLOSING: the server started closing it (what is queued is written first, then the
      close frame), or its reader saw the end (the peer closed, or the TCP connection broke).
    - CLOSED: over: `close_code` is set; the disconnect handlers run now (once).

    `Connection.closed` (no more messages taken) can be True before CLOSING: the peer's close
    frame or the end of its TCP connection stop sends at once.
    """

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


class ConnectionCounters(Protocol):
    """The server's counters a connection adds to (`ServerStats`)."""

    messages_out: int
    slow_consumers: int
    dropped_messages: int
    heartbeat_timeouts: int


class ConnectionHost(Protocol):
    """What a `Connection` calls back: the manager builds one from its parts (_engine/manager.py).

    `dispatch(conn, frame)` handles one incoming message (the reader awaits it: one at a
    time, in order); `heartbeat_add(conn)` puts an open connection on the heartbeat schedule
    (None when heartbeats are off); `rooms_of(conn)` is `Connection.rooms`; `flushes` decides
    when sends are corked and writes what was corked; `stats` and `options` are the server's.
    """

    @property
    def options(self) -> ServerOptions: ...

    @property
    def stats(self) -> ConnectionCounters: ...

    @property
    def flushes(self) -> FlushQueue[Connection]: ...

    @property
    def dispatch(self) -> Callable[[Connection, str | bytes], Awaitable[None]]: ...

    @property
    def heartbeat_add(self) -> Callable[[Connection], Beat[Connection] | None]: ...

    @property
    def rooms_of(self) -> Callable[[Connection], frozenset[str]]: ...


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
    """The handshake headers, read-only, looked up case-insensitively; a repeated header's
    values joined with ", ". A copy, not a view of websockets' request: that one (its header
    list, a dict of lists, both spellings of every name) is dropped once the connection is
    open, ~1.5 KiB a connection (docs/performance.md)."""

    __slots__ = ("_h",)

    def __init__(self, headers: Any) -> None:
        h: dict[str, str] = {}
        for name, value in headers.raw_items():
            key = name.lower()
            before = h.get(key)
            h[key] = value if before is None else f"{before}, {value}"
        self._h = h

    def __getitem__(self, key: str) -> str:
        return self._h[key.lower()]

    def __iter__(self) -> Any:
        return iter(self._h)

    def __len__(self) -> int:
        return len(self._h)


def shared_deflate_key(extensions: Sequence[Extension]) -> DeflateKey | None:
    """The parameters of a permessage-deflate without server context takeover, the only
    extension negotiated: then every message compresses to the same bytes for every
    connection with these parameters. None otherwise (no extension, or state per connection)."""
    if len(extensions) != 1:
        return None
    ext = extensions[0]
    if not isinstance(ext, PerMessageDeflate) or not ext.local_no_context_takeover:
        return None
    return ext.local_max_window_bits, tuple(sorted(ext.compress_settings.items()))


_DIRECT_TYPES: dict[type, bool] = {}


def _direct_writes(stream: object) -> TypeGuard[DirectWrites]:
    """`isinstance(stream, DirectWrites)`, answered once per type: a runtime protocol check
    was ~2 % of a connection's setup CPU."""
    known = _DIRECT_TYPES.get(type(stream))
    if known is None:
        known = _DIRECT_TYPES[type(stream)] = isinstance(stream, DirectWrites)
    return known


class Connection:
    """A client connection, from its handshake to its end.

    Attributes for the app: `id` (unique, also across servers), `user_id` (set it in the
    connection handler, e.g. from a token), `state` (a dict for anything else), `request`
    (path, query, headers, peer of the handshake), `expires_at` (Unix time when the server
    closes the connection with 4004 unless a `refresh` moves it; None: never; set by
    `JWTAuthenticator`, or by the app's connection handler).

    Sending never waits on the client: `send` serializes the message and, when the connection
    is idle, writes it with a non-blocking send: at once when the server is quiet, or corked
    with the rest of a burst for one write a few scheduler passes later (`FlushQueue`);
    otherwise it queues it in the connection's bounded outbox for the connection's writer
    task. When the outbox is full the manager's slow-consumer policy applies.

    Tasks: the reader runs in the handler task websockets gives the connection. The writer is
    started (in websockets' nursery for the connection; `run` cancels and awaits it) only
    when something has to wait: a full socket buffer, a write in progress, a TLS stream; it
    returns once everything is written. The
    heartbeat is the server's, one schedule for every connection (`_core/heartbeat.py`).

    `status` is where the connection is in its life (`ConnectionState`). The methods under
    "engine side" (`run`, `flush_corked`, the `heartbeat_*` ones, `mark_closed`) are called
    by the server's parts, never by an application.
    """

    def __init__(self, host: ConnectionHost, ws: ServerConnection) -> None:
        # websockets' connection id (a random UUID, as this was), not a second one per
        # handshake: the same id in websockets' log records and trio_rt's.
        self.id: str = ws.id.hex
        self.user_id: str | None = None
        self.state: dict[str, Any] = {}
        # Unix time after which the server no longer accepts this connection's credentials
        # (set by JWTAuthenticator; a `refresh` moves it). The manager closes it then (4004).
        self.expires_at: float | None = None
        self.request: Request = Request.from_websockets(ws)
        self._host = host
        self._ws = ws
        self._status = ConnectionState.CONNECTING
        o = host.options
        self._outbox = Outbox(o.outbox_size, o.outbox_max_bytes, o.slow_consumer_policy)
        # websockets' nursery for this connection while `run` takes tasks (the writer, the
        # closing task); `run` cancels and waits for them, so none outlives it.
        self._nursery: trio.Nursery | None = None
        self._writer_scope: trio.CancelScope | None = None  # set while a writer task runs
        self._writer_exited: trio.Event | None = None  # created by whoever waits for it
        self._handling = False  # a message handler task runs (`_handle_messages`)
        self._handler_exited: trio.Event | None = None  # created by `run` if it must wait
        self._closer_scope: trio.CancelScope | None = None  # set while a closing task runs
        self._closer_exited: trio.Event | None = None  # created by `run` if it must wait
        self._torn_write = False  # a write was cancelled midway: the stream is unusable
        # Set once open when the stream can be written synchronously (plain TCP).
        self._direct: DirectWrites | None = None
        self._framed_here = False  # extensions (deflate): frames are built per connection
        self._deflate_key: DeflateKey | None = None  # deflate without context: shared frames
        self._in_flight = False  # the writer holds a batch it has not finished writing
        self._ping_wanted: bytes | None = None  # a heartbeat ping for the writer to send
        self._beat: Beat[Connection] | None = None  # this connection's heartbeat entry
        self._close_code: int | None = None  # set when the server decides to close
        self._close_reason = ""
        self._closed_event: trio.Event | None = None  # CLOSED; created by whoever waits for it
        self.messages_in = 0
        self.messages_out = 0

    def __repr__(self) -> str:
        return f"<Connection {self.id[:8]} user={self.user_id!r}>"

    # -- public --------------------------------------------------------------------------------
    @property
    def rooms(self) -> frozenset[str]:
        """Rooms this connection is a member of."""
        return self._host.rooms_of(self)

    @property
    def status(self) -> ConnectionState:
        """Where the connection is in its life: CONNECTING, OPEN, CLOSING, CLOSED."""
        return self._status

    @property
    def closed(self) -> bool:
        """True once the connection takes no more messages: it is closing (either side
        started the close, the peer's TCP connection ended, or the server dropped it) or has
        ended. Sends from then on are dropped at once (see `send`); a handler that loops
        sending to one client can stop on it. The disconnect handler runs later, once the
        connection has ended."""
        return (
            self._status is ConnectionState.CLOSED
            or self._outbox.closed
            or self._ws.protocol.state > OPEN
        )

    @property
    def close_code(self) -> int | None:
        """The close code, once the connection is CLOSED (1006 when the TCP connection
        dropped)."""
        if self._status is not ConnectionState.CLOSED:
            return None
        return self._final_close_code()

    @property
    def outbox_depth(self) -> int:
        """Messages queued for the writer (not yet written)."""
        return len(self._outbox)

    @property
    def outbox_bytes(self) -> int:
        """The payload bytes of the messages queued for the writer."""
        return self._outbox.queued_bytes

    async def send(self, data: dict[str, Any]) -> None:
        """Queue `data` (JSON-serializable) for this client.

        Returns once queued, not once written. Raises TypeError/ValueError for data JSON cannot
        represent. A message to a connection that is `closed` (closing or ended, also when the
        peer is gone and the server has not noticed everything yet) is dropped silently and
        cheaply, without being serialized (only a checkpoint: a loop of sends still lets
        other tasks run): the disconnect handler is where the app learns that a client is
        gone, and `closed` is how a sending loop can tell.
        """
        if self._outbox.closed or self._ws.protocol.state > OPEN:
            await trio.lowlevel.checkpoint()
            return
        self.send_encoded(OutboundMessage(encode(data)))
        await trio.lowlevel.checkpoint()

    def send_encoded(self, message: OutboundMessage, cork: bool | None = None) -> bool:
        """Queue an already serialized message without waiting. Returns False if not queued.

        When the connection is idle (nothing queued or being written), the frame goes to the
        socket without a writer task: at once with a non-blocking send when the server is
        quiet, or corked for one write with the frames that follow it when sends come in a
        burst (`FlushQueue`; a fan-out passes `cork`, decided once for all its recipients).
        With compression the frame is compressed here, in the order of sending. A message to
        a `closed` connection is dropped (False) without framing it: websockets' protocol
        refuses to frame for a connection that is closing or closed.
        """
        direct = self._direct
        if direct is not None:
            outbox = self._outbox
            if (
                cork is False
                and not self._framed_here
                and not outbox.queue
                and not outbox.sealed
                and not self._in_flight
                and self._ws.protocol._state is OPEN
            ):
                # A fan-out in a quiet server: write now. This runs once per recipient of
                # every broadcast, so it reads attributes only (a property or method call
                # costs several): the connection's checks of `_can_write_now` here
                # (`_state`: websockets' `state` without the property), the socket's (idle,
                # the send lock, nothing corked) in `send_frame`, with the write.
                key = self._deflate_key
                sent = direct.send_frame(
                    (message.framed or message.frame)
                    if key is None
                    else message.deflated_frame(key)
                )
                if sent <= PARTIAL:
                    if sent == PARTIAL:
                        self._wake_writer()  # the writer flushes what the kernel left
                    self.messages_out += 1
                    self._host.stats.messages_out += 1
                    return True
                if sent == BROKEN:
                    return False  # the reader sees the broken socket and ends the connection
                # BUSY (a write under way, frames corked): as any other send, below.
            elif cork and not self._framed_here and self._ws.protocol._state is OPEN:
                # A burst's fan-out: while its frames are corked, a connection's checks hold
                # (see below), so the frame joins them; attribute reads only, as above.
                key = self._deflate_key
                corked = direct.cork_more(
                    (message.framed or message.frame)
                    if key is None
                    else message.deflated_frame(key)
                )
                if corked != BUSY:
                    if corked == CORKED_FULL:
                        self.flush_corked()  # bounded: beyond this the outbox's bounds apply
                    self.messages_out += 1
                    self._host.stats.messages_out += 1
                    return True
                # BUSY (nothing corked yet: the first frame of a window): below.
            if direct.corking:
                # Corked frames exist only while the checks below hold: every change that
                # could break them (a queued message, any write, a close) takes the corked
                # frames. But not the peer's close frame or EOF, which websockets' reader
                # applies to the protocol without writing: the state says so.
                if self._ws.protocol.state is not OPEN:
                    return False
                if direct.cork(self._wire(message)):
                    self.flush_corked()  # bounded: beyond this the outbox's bounds apply
                self.messages_out += 1
                self._host.stats.messages_out += 1
                return True
            if not outbox.queue and self._can_write_now(direct):
                flushes = self._host.flushes
                if cork is None:
                    cork = flushes.begin()
                if cork and flushes.running:
                    direct.cork(self._wire(message))
                    flushes.add(self)
                elif not direct.send_now(self._wire(message)):
                    return False  # a broken socket: the reader sees it and ends the connection
                elif direct.pending:
                    self._wake_writer()  # the writer flushes what the kernel left
                self.messages_out += 1
                self._host.stats.messages_out += 1
                return True
            # From here on the message waits in the outbox: what is corked goes first.
            direct.uncork_to_pending()
        if self._ws.protocol.state > OPEN:
            return False  # closing or ended: nothing is queued, no writer started (see closed)
        result = self._outbox.offer(message)
        if result is Offer.QUEUED:
            self._wake_writer()
            return True
        if result is Offer.OVERFLOW:
            self._host.stats.slow_consumers += 1
            self._abort(CloseCode.SLOW_CONSUMER, "slow consumer: outbox full")
        elif result is Offer.DROPPED:
            self._host.stats.dropped_messages += 1
            self._wake_writer()
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
        status = self._status
        if status is ConnectionState.CONNECTING:
            # Still in the handshake (e.g. called from the connection handler): the connection
            # closes as soon as it opens. Nothing to wait for.
            self._outbox.seal()
            await trio.lowlevel.checkpoint()
            return
        if status is ConnectionState.CLOSED:
            await trio.lowlevel.checkpoint()
            return
        self._start_close()
        if self._closed_event is None:
            self._closed_event = trio.Event()
        await self._closed_event.wait()

    def close_soon(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """`close` without waiting (sync): for the server's own tasks and for code that must
        not block on one client. Queued messages are still written first."""
        if self._close_code is None:
            self._close_code = code
            self._close_reason = reason
        if self._status is ConnectionState.CONNECTING:
            self._outbox.seal()
        else:
            self._start_close()

    # -- engine side: called by the server's parts, not by applications ----------------------
    async def run(
        self,
        welcome: OutboundMessage | None = None,
        ended: Callable[[Connection], Awaitable[None]] | None = None,
    ) -> None:
        """Serve the connection once the upgrade is done, until it ends (OPEN to CLOSED).
        `welcome` goes out first, before what the connection handlers queued. Reads in the
        calling task (the one websockets gives the connection); its writer and closing tasks,
        when needed, run in websockets' nursery for the connection (`ws.nursery`), and are
        cancelled and awaited before this returns: none outlives it. So does the message
        handler task, started when messages come and awaited (not cancelled): what was
        received is handled. Puts the connection on the heartbeat schedule. `ended(self)` is
        called last, shielded, however the connection ended (the lifecycle's `finish`).

        No nursery of its own: an idle connection would keep one (~1 KiB) for tasks it
        rarely has (docs/performance.md)."""
        if welcome is not None:
            self._outbox.push_front(welcome)
            del welcome  # this frame lives as long as the connection: keep no reference
        ws = self._ws
        stream_ended = False  # read_events said so (the stream is closed)
        try:
            self._nursery = ws.nursery
            self._status = ConnectionState.OPEN
            if _direct_writes(ws.stream):  # plain TCP (_transport/direct_stream.py)
                self._direct = ws.stream
            self._deflate_key = shared_deflate_key(ws.protocol.extensions)
            self._framed_here = bool(ws.protocol.extensions) and self._deflate_key is None
            self._beat = self._host.heartbeat_add(self)
            if self._close_code is not None:  # closed during the handshake
                self._start_close()
            elif self._outbox:  # the welcome, and what the connection handler queued
                self._flush_now()  # with the corked upgrade response, in one write
            if self._direct is not None and self._direct.corking:
                self.flush_corked()  # the upgrade response, corked by the handshake
            # The reader, in this task (websockets starts none: _transport/ws_connection.py):
            # it reads until the stream ends, so pings, pongs and the close handshake are
            # answered while a message handler runs; messages go to a handler task.
            hosted = cast("HostedSocket", ws)
            while await hosted.read_events():
                if hosted.messages_queued and not self._handling:
                    self._spawn_handler()
            stream_ended = True
        finally:
            if not stream_ended:  # cancelled (a server shutting down) or failed: end the stream
                with trio.CancelScope(shield=True):
                    await cast("HostedSocket", ws).close_stream()
            with trio.CancelScope(shield=True):
                # What was received before the end is still handled, as it was read.
                if not self._handling and cast("HostedSocket", ws).messages_queued:
                    self._spawn_handler()
                await self._wait_handler()
            # No new task from here on: closing is under way.
            self._nursery = None
            if self._status is ConnectionState.OPEN:
                self._status = ConnectionState.CLOSING
            with trio.CancelScope(shield=True):
                await self._stop_tasks()
            self._stop_heartbeat()
            self.mark_closed()
            if ended is not None:
                with trio.CancelScope(shield=True):
                    await ended(self)
            # No cycle ws <-> conn: reference counting frees both (no work for the cyclic GC).
            cast("HostedSocket", ws).trio_rt_conn = None

    def _spawn_handler(self) -> None:
        """Start the message handler task (at most one: it takes the messages in order)."""
        assert self._nursery is not None and not self._handling
        self._handling = True
        self._nursery.start_soon(self._handle_messages)

    async def _handle_messages(self) -> None:
        """Dispatch the received messages one at a time, in order, until none is left (or
        the connection ended and everything received was dispatched), then return: an idle
        connection keeps no task for this. Flow control is websockets': past `max_queue`
        unhandled messages the reader stops reading until this catches up. An invalid
        message (bad UTF-8, too many fragments) fails the connection in `recv`."""
        ws = self._ws
        hosted = cast("HostedSocket", ws)
        dispatch = self._host.dispatch
        try:
            while True:
                try:
                    frame = await ws.recv()
                except ConnectionClosed:
                    break
                self.messages_in += 1
                await dispatch(self, frame)
                if not hosted.messages_queued:
                    break
        except Exception:
            # dispatch never raises for what a client sent or a handler raised; anything
            # else ends the connection (1011), logged, as websockets' handler did.
            log.exception("handling a message of %r failed", self)
            self._abort(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._handling = False
            if self._handler_exited is not None:
                self._handler_exited.set()
                self._handler_exited = None

    async def _wait_handler(self) -> None:
        """Return once no message handler task is running."""
        if not self._handling:
            return
        if self._handler_exited is None:
            self._handler_exited = trio.Event()
        await self._handler_exited.wait()

    def _spawn_closer(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Start the closing task (at most one per connection: only OPEN -> CLOSING does)."""
        assert self._nursery is not None and self._closer_scope is None
        self._closer_scope = trio.CancelScope()
        self._nursery.start_soon(self._closer, closer, self._closer_scope)

    async def _closer(self, closer: Callable[[], Awaitable[None]], scope: trio.CancelScope) -> None:
        try:
            with scope:
                await closer()
        except Exception:
            # In websockets' nursery an error would end the connection unlogged: log it here,
            # and the connection still ends (the stream is closed, the reader sees it).
            log.exception("closing %r failed", self)
            await trio.aclose_forcefully(self._ws.stream)
        finally:
            self._closer_scope = None
            if self._closer_exited is not None:
                self._closer_exited.set()
                self._closer_exited = None

    async def _stop_tasks(self) -> None:
        """Cancel the writer and the closing task, if running, and wait until both are gone."""
        if self._writer_scope is not None:
            self._writer_scope.cancel()
        if self._closer_scope is not None:
            self._closer_scope.cancel()
            if self._closer_exited is None:
                self._closer_exited = trio.Event()
            await self._closer_exited.wait()
        await self._wait_writer()

    def mark_closed(self) -> None:
        """The connection is over (its `run` ended, or it never opened): CLOSED, its outbox
        takes nothing more, and whoever waits in `close` returns. Idempotent."""
        self._outbox.close()
        self._status = ConnectionState.CLOSED
        if self._closed_event is not None:
            self._closed_event.set()

    def _final_close_code(self) -> int:
        if self._close_code is not None:
            return self._close_code
        proto = self._ws.protocol
        if proto.close_rcvd is not None:
            return proto.close_rcvd.code
        if proto.close_sent is not None:
            return proto.close_sent.code
        return CloseCode.ABNORMAL

    # -- writing ----------------------------------------------------------------------------------
    def _can_write_now(self, direct: DirectWrites) -> bool:
        """True when bytes may go to the socket right now, without waiting: nothing is being
        written or waits to be (by the writer, websockets or the kernel), the connection is
        open and the outbox takes messages."""
        return (
            direct.idle
            and not self._in_flight
            and not self._outbox.closed
            and not self._ws.send_lock.locked()
            and self._ws.protocol.state is OPEN
        )

    def _flush_now(self) -> None:
        """Write everything queued now if the connection is idle, else leave it to the writer."""
        direct = self._direct
        if direct is None or not self._can_write_now(direct):
            self._wake_writer()
            return
        batch = self._outbox.take_all()
        if direct.send_now(self._encode_batch(batch)):
            if direct.pending:
                self._wake_writer()
            self.messages_out += len(batch)
            self._host.stats.messages_out += len(batch)

    def flush_corked(self) -> None:
        """Engine side: write what `send_encoded` corked (the server's `FlushQueue` calls
        this)."""
        direct = self._direct
        if direct is not None and direct.flush() and direct.pending:
            self._wake_writer()  # the writer flushes what the kernel left

    def _wire(self, message: OutboundMessage) -> bytes:
        """The bytes of `message` on this connection's wire. Shared by every recipient (one
        frame, or one compressed frame per deflate parameter set) unless the connection's
        extensions keep state between messages: then framed here, so only when those bytes
        are about to be written, in order."""
        key = self._deflate_key
        if key is not None:
            return message.deflated_frame(key)
        if self._framed_here:
            proto = self._ws.protocol
            proto.send_text(message.payload)
            return b"".join(proto.data_to_send())
        return message.frame

    def _encode_batch(self, batch: list[OutboundMessage]) -> bytes:
        """The bytes of `batch` on the wire (see `_wire`)."""
        if len(batch) == 1:
            return self._wire(batch[0])
        return b"".join([self._wire(m) for m in batch])

    def _uncork(self) -> None:
        """The outbox takes nothing more: what is corked waits for the next write like queued
        bytes, and later sends cannot cork (they meet the closed outbox)."""
        if self._direct is not None:
            self._direct.uncork_to_pending()

    def _wake_writer(self) -> None:
        """Make sure a writer task writes what is queued: start one unless it runs already."""
        if self._writer_scope is not None or self._nursery is None:
            return  # running (it loops until nothing is left), or the connection is ending
        self._writer_scope = trio.CancelScope()
        self._nursery.start_soon(self._writer, self._writer_scope)

    async def _writer(self, scope: trio.CancelScope) -> None:
        """Write until nothing is queued, pending or wanted (a ping), then return."""
        ws = self._ws
        outbox = self._outbox
        direct = self._direct
        try:
            with scope:
                while outbox or self._ping_wanted is not None or (direct and direct.pending):
                    batch = outbox.take_all()
                    self._in_flight = True  # direct sends wait until this batch is written
                    try:
                        async with ws.send_lock:
                            if ws.protocol.state is not OPEN:
                                return
                            ping, self._ping_wanted = self._ping_wanted, None
                            if ping is not None:
                                ws.protocol.send_ping(ping)
                                data = b"".join(ws.protocol.data_to_send())
                                if batch:
                                    data += self._encode_batch(batch)
                            else:
                                data = self._encode_batch(batch) if batch else b""
                            try:
                                await ws.stream.send_all(data)  # pending direct bytes first
                            except trio.Cancelled:
                                self._torn_write = True
                                raise
                    finally:
                        self._in_flight = False
                    self.messages_out += len(batch)
                    self._host.stats.messages_out += len(batch)
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            # The peer is gone; the reader sees it too and ends the connection.
            await trio.aclose_forcefully(ws.stream)
        except Exception:
            # Not in `run`'s nursery (it has none): log what would otherwise end the
            # connection unlogged; the reader sees the closed stream and ends it.
            log.exception("writing to %r failed", self)
            await trio.aclose_forcefully(ws.stream)
        finally:
            self._writer_scope = None
            if self._writer_exited is not None:
                self._writer_exited.set()
                self._writer_exited = None

    async def _wait_writer(self) -> None:
        """Return once no writer task is running."""
        if self._writer_scope is None:
            await trio.lowlevel.checkpoint()
            return
        if self._writer_exited is None:
            self._writer_exited = trio.Event()
        await self._writer_exited.wait()

    # -- heartbeat (engine side: driven by the server's schedule) ---------------------------------
    def heartbeat_ping(self, payload: bytes) -> None:
        """Send a heartbeat ping now if the socket is free, else have the writer send it."""
        direct = self._direct
        if self._ping_wanted is None and direct is not None and self._can_write_now(direct):
            proto = self._ws.protocol
            proto.send_ping(payload)
            if direct.send_now(b"".join(proto.data_to_send())) and direct.pending:
                self._wake_writer()
            return
        if self._ws.protocol.state is OPEN:
            self._ping_wanted = payload  # a newer ping replaces one not sent yet
            self._wake_writer()

    def heartbeat_pong(self, payload: bytes) -> None:
        """A pong came (websockets' reader hands every pong here): it may answer our ping."""
        if self._beat is not None:
            HeartbeatSchedule.pong(self._beat, payload)

    def heartbeat_timed_out(self) -> None:
        """The pong of our ping is late: close at once (4001). The schedule dropped it."""
        self._beat = None
        self._host.stats.heartbeat_timeouts += 1
        self._abort(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")

    def _stop_heartbeat(self) -> None:
        if self._beat is not None:
            HeartbeatSchedule.remove(self._beat)
            self._beat = None

    # -- closing ----------------------------------------------------------------------------------
    def _start_close(self) -> None:
        """OPEN -> CLOSING: start closing in the connection's nursery: gracefully, or at once
        after an abort. Nothing to do in any other state."""
        if self._status is not ConnectionState.OPEN:
            return
        assert self._nursery is not None  # OPEN: the run's nursery takes tasks
        self._status = ConnectionState.CLOSING
        self._stop_heartbeat()  # the closing handshake, bounded by close_timeout, decides now
        if self._outbox.aborted:
            self._spawn_closer(self._abort_close)
        else:
            self._outbox.seal()
            self._uncork()
            self._spawn_closer(self._graceful_close)

    async def _graceful_close(self) -> None:
        # A writer empties the sealed outbox and returns; then the close frame goes out.
        with trio.move_on_after(self._host.options.close_timeout):
            direct = self._direct
            if self._outbox or (direct is not None and direct.pending):
                self._wake_writer()
            await self._wait_writer()
            if not self._torn_write:
                await self._ws.aclose(self._close_code or CloseCode.NORMAL, self._close_reason)
        await trio.aclose_forcefully(self._ws.stream)
        self.mark_closed()

    def _abort(self, code: int, reason: str) -> None:
        """Close at once, dropping what is queued (slow consumer, dead peer). Sync and safe to
        call from a broadcast: the closing work runs in the connection's nursery."""
        if self._outbox.aborted:
            return
        if self._close_code is None:
            self._close_code = code
            self._close_reason = reason
        self._outbox.close()
        self._uncork()
        self._ping_wanted = None
        self._stop_heartbeat()
        if self._writer_scope is not None:
            self._writer_scope.cancel()
        if self._status is ConnectionState.OPEN:
            assert self._nursery is not None
            self._status = ConnectionState.CLOSING
            self._spawn_closer(self._abort_close)

    async def _abort_close(self) -> None:
        # A short grace period to get the close code out while the socket still takes it.
        with trio.move_on_after(min(1.0, self._host.options.close_timeout)):
            await self._wait_writer()
            if not self._torn_write and self._ws.protocol.state is OPEN:
                await self._ws.aclose(
                    self._close_code or CloseCode.INTERNAL_ERROR, self._close_reason
                )
        await trio.aclose_forcefully(self._ws.stream)
        self.mark_closed()

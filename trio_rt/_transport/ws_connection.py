"""The websockets edge: trio_rt's subclass of websockets' Trio server connection, and
`start_websockets_server`, which runs websockets' `Server` with it and trio_rt's own handler
per accepted connection (`serve_stream`: websockets' `serve` handler, with the handshake's
deadline on a cancel scope instead of `trio.fail_after`).

What the subclass changes, and why (docs/architecture.md, docs/performance.md):

- no reader task (websockets' `recv_events`): whoever serves the connection reads it with
  `read_events`, one pass of upstream's loop at a time: the handshake reads the request in
  websockets' handler task, then `Connection.run` reads in the same task;
- the socket is wrapped in `DirectStream`, so broadcasts write idle connections synchronously;
  the upgrade response is corked and goes out with the welcome in one write;
- websockets' frame queue is replaced by `LightAssembler` (same contract, less memory);
- once open, websockets' request parser is swapped for a fresh frame parser (its frame holds
  the request);
- the handshake's fast paths, each leaving anything unusual to websockets' own code (so every
  refusal is websockets' answer): a request head that comes whole is parsed in one pass
  (`_upgrade_request.parse_request_head`), the plain valid upgrade is checked without
  websockets' header parsers (`_process_upgrade`), the 101 is written as bytes
  (`_upgrade_response`, the Date formatted once per second);
- the subprotocol hook is a method of the protocol's class (`_ServerProtocol`), not a closure
  over each connection;
- pongs go to the connection's heartbeat (`Connection.heartbeat_pong`);
- a reference cycle is broken when the handshake ends, so closed connections are freed by
  reference counting, and a connection that never upgraded is handed back to the server's
  handshake part (`HandshakeHost.handshake_abandoned`) for cleanup.

It knows trio_rt's side only through `trio_rt_conn` (the `Connection` being handshaken,
set by the handshake part) and `trio_rt_host` (a `HandshakeHost`, set on the class bound for
one server by `start_websockets_server`).

It mirrors websockets 17.x's `ServerConnection.handshake`, `ServerConnection.__init__` and
`Connection.__init__`, `Connection.recv_events` (`read_events`), `ServerProtocol.accept` and
`process_request` (the fast paths) and `Request.parse`, and relies on attributes
websockets does not document; tests/engine/test_websockets_internals.py lists them and fails
when the mirrored upstream code changes (pyproject.toml pins websockets to the tested range).
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import inspect
import logging
import math
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

import trio
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import SERVER, Response
from websockets.http11 import Request as WsRequest
from websockets.protocol import CONNECTING, OPEN
from websockets.protocol import Protocol as WsProtocol
from websockets.server import ServerProtocol
from websockets.streams import StreamReader
from websockets.trio.connection import Connection as WsConnection
from websockets.trio.server import Server, ServerConnection
from websockets.typing import Subprotocol
from websockets.utils import accept_key

from .._core.options import ServerOptions
from .assembler import LightAssembler
from .direct_stream import DirectStream
from .upgrade_request import parse_request_head

if TYPE_CHECKING:
    from .._engine.connection import Connection

__all__ = ["HandshakeHost", "_ServerConnection", "start_websockets_server"]


class HandshakeHost(Protocol):
    """The handshake's decisions: websockets' two hooks, and what the connection calls back
    when a handshake ends without an upgrade (trio_rt's `HandshakeAdmission`)."""

    async def process_request(self, ws: ServerConnection, request: WsRequest) -> Response | None:
        """websockets' `process_request`: None lets the upgrade go on."""

    def select_subprotocol(self, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        """websockets' `select_subprotocol` (without the connection: it does not depend on
        it). May be called twice for one handshake whose request websockets refuses (the
        upgrade's fast path, then websockets' `accept`): no side effects."""

    async def handshake_abandoned(self, conn: Connection, accepted: bool) -> None:
        """`conn` never opened (rejected late, abandoned, timed out). `accepted`: the
        connection handlers had let it in (its disconnect handlers are due)."""


async def start_websockets_server(
    nursery: trio.Nursery,
    handler: Callable[[ServerConnection], Awaitable[None]],
    listeners: list[trio.SocketListener],
    options: ServerOptions,
    host: HandshakeHost,
) -> Server:
    """Start websockets' Trio server in `nursery` on `listeners`, with trio_rt's connection
    class bound to `host`; `handler(ws)` serves each upgraded connection. Returns the server
    (its `aclose` stops the listener). Pings are trio_rt's heartbeat, not websockets'; no TLS
    (a TLS front end terminates it). websockets' `serve` is not used: each accepted
    connection runs `serve_stream`, the same steps for these settings."""
    o = options
    conn_class = type("_BoundServerConnection", (_ServerConnection,), {"trio_rt_host": host})
    # The subprotocol hook as a method of the protocol's class: websockets' `select_subprotocol`
    # argument is bound per connection (an instance attribute and a closure over the
    # connection: a reference cycle, and ~3 % of a handshake's CPU).
    protocol_class = type(
        "_BoundServerProtocol",
        (_ServerProtocol,),
        {"trio_rt_select": staticmethod(host.select_subprotocol)},
    )
    extensions = _deflate(o)
    open_timeout = o.handshake_timeout
    close_timeout = o.close_timeout
    max_size = o.max_message_size
    logger = logging.getLogger("trio_rt.websockets")
    process_request = host.process_request

    async def serve_stream(stream: trio.abc.Stream) -> None:
        """One accepted TCP connection, from the handshake to its end: websockets 17.x's
        `serve` connection handler (same steps, same outcomes: the handshake bounded by
        `open_timeout`, the TCP connection closed however it ends), written for trio_rt's
        settings (no TLS, no keepalive: pings are trio_rt's heartbeat). The handshake's
        deadline is the cancel scope's own, where upstream enters `trio.fail_after`'s
        context manager (~5 % of a handshake's CPU, docs/performance.md). The nursery
        stays: the connection's tasks (writer, message handler) run in it."""
        async with trio.open_nursery() as nursery:
            try:
                with trio.CancelScope(
                    deadline=trio.current_time() + open_timeout
                    if open_timeout is not None
                    else math.inf
                ) as scope:
                    protocol = protocol_class(
                        extensions=extensions,
                        max_size=max_size,
                        logger=logger,
                    )
                    connection = conn_class(
                        nursery,
                        stream,
                        protocol,
                        server,
                        ping_interval=None,
                        ping_timeout=None,
                        close_timeout=close_timeout,
                        max_queue=16,
                    )
                    await connection.handshake(process_request, None, "trio_rt")
                if scope.cancelled_caught:  # the handshake timed out: upstream's TooSlowError
                    await trio.aclose_forcefully(stream)
                    return
                if connection.protocol.state is not OPEN:
                    await connection.close_stream()
                    return
                server.all_connections.add(connection)
                try:
                    async with connection:
                        await handler(connection)
                except Exception:
                    connection.logger.error("connection handler failed", exc_info=True)
                finally:
                    server.all_connections.discard(connection)
            except Exception:
                # Don't leak the TCP connection when something unexpected failed.
                await trio.aclose_forcefully(stream)

    server = Server(listeners, serve_stream, logger)
    started: Server = await nursery.start(server.serve_forever)
    return started


def _deflate(o: ServerOptions) -> list[ServerPerMessageDeflateFactory] | None:
    """permessage-deflate as websockets configures it by default (window 2^12, memLevel 5),
    plus server_no_context_takeover when compression_context_takeover is off."""
    if not o.compression:
        return None
    return [
        ServerPerMessageDeflateFactory(
            server_no_context_takeover=not o.compression_context_takeover,
            server_max_window_bits=12,
            client_max_window_bits=12,
            compress_settings={"memLevel": 5},
        )
    ]


class _ServerProtocol(ServerProtocol):
    """websockets' server protocol whose `select_subprotocol` is the server's hook
    (`trio_rt_select`, set on the class bound for one server by `start_websockets_server`),
    as websockets calls it (`process_subprotocol`); websockets' own would refuse a client
    offering none of the server's subprotocols."""

    trio_rt_select: Callable[[Sequence[Subprotocol]], Subprotocol | None]

    def select_subprotocol(self, subprotocols: Sequence[Subprotocol]) -> Subprotocol | None:
        return self.trio_rt_select(subprotocols)


# Connection and Upgrade headers as clients send them, which websockets' `process_request`
# accepts (its parse_connection / parse_upgrade: ~3 µs a handshake, docs/performance.md).
_PLAIN_CONNECTION = (["Upgrade"], ["upgrade"], ["keep-alive, Upgrade"])
_PLAIN_UPGRADE = ["websocket"]


def _process_upgrade(
    protocol: ServerProtocol, request: WsRequest
) -> tuple[str, str | None, str | None] | None:
    """websockets' `ServerProtocol.process_request` for the request every client sends:
    a GET HTTP/1.1 whose Connection and Upgrade headers are one of the plain forms above, one
    Sec-WebSocket-Key of 16 bytes in base64, Sec-WebSocket-Version 13; then its own steps
    (origin, extensions, subprotocol), which may raise as there. None, with nothing done, for
    any other request: websockets' `process_request` checks it (and refuses it)."""
    headers = request.headers
    if (
        request.method != "GET"
        or request.protocol != "HTTP/1.1"
        or headers.get_all("Connection") not in _PLAIN_CONNECTION
        or headers.get_all("Upgrade") != _PLAIN_UPGRADE
        or headers.get_all("Sec-WebSocket-Version") != ["13"]
    ):
        return None
    keys = headers.get_all("Sec-WebSocket-Key")
    if len(keys) != 1:
        return None
    key = keys[0]
    try:
        if len(base64.b64decode(key.encode(), validate=True)) != 16:
            return None
    except binascii.Error:
        return None
    accept = accept_key(key)
    protocol.origin = protocol.process_origin(headers)
    extensions, protocol.extensions = protocol.process_extensions(headers)
    subprotocol = protocol.subprotocol = protocol.process_subprotocol(headers)
    return accept, extensions, subprotocol


def _upgrade_response(
    accept: str, extensions: str | None, subprotocol: str | None, server: str | None
) -> bytes:
    """The bytes websockets' `ServerProtocol.accept` and `Response.serialize` make of a 101
    response (same headers, same order), with `Server: server` appended as its handshake
    does. tests/engine/test_upgrade_response.py compares the two."""
    head = _UPGRADE_HEAD % _http_date()
    head += f"Sec-WebSocket-Accept: {accept}\r\n"
    if extensions is not None:
        head += f"Sec-WebSocket-Extensions: {extensions}\r\n"
    if subprotocol is not None:
        head += f"Sec-WebSocket-Protocol: {subprotocol}\r\n"
    if server is not None:
        head += f"Server: {server}\r\n"
    return (head + "\r\n").encode("iso-8859-1")


_UPGRADE_HEAD = (
    "HTTP/1.1 101 Switching Protocols\r\nDate: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
)


class _HttpDate:
    """`email.utils.formatdate(usegmt=True)` of the current second, formatted once per second."""

    second = -1
    text = ""


def _http_date() -> str:
    now = int(time.time())
    if now != _HttpDate.second:
        _HttpDate.text = email.utils.formatdate(now, usegmt=True)
        _HttpDate.second = now
    return _HttpDate.text


_REQUEST_RECEIVED = trio.Event()  # `request_rcvd` of every open connection: set for good
_REQUEST_RECEIVED.set()


class _LazyLock:
    """websockets' `send_lock` as it uses it (`async with`, `locked()`): a `trio.Lock` that
    exists only while held (websockets' reader takes it after every read, mostly to write
    nothing), same semantics: released with a waiter, it is handed over and kept. While it is
    held, the connection's `DirectStream` knows it (`lock_held`): a fan-out's direct write
    checks the stream alone."""

    __slots__ = ("_lock", "_stream")

    def __init__(self, stream: DirectStream | None = None) -> None:
        self._lock: trio.Lock | None = None
        self._stream = stream

    def locked(self) -> bool:
        return self._lock is not None and self._lock.locked()

    async def __aenter__(self) -> None:
        lock = self._lock
        if lock is None:
            lock = self._lock = trio.Lock()
        await lock.acquire()
        if self._stream is not None:
            self._stream.lock_held = True

    async def __aexit__(self, *exc: object) -> None:
        lock = self._lock
        assert lock is not None
        lock.release()
        if not lock.locked():  # no waiter took it over: nobody holds a reference to it
            self._lock = None
            if self._stream is not None:
                self._stream.lock_held = False


def _restart_frame_parser(protocol: ServerProtocol) -> None:
    """Once open, swap the protocol's parser for a fresh frame parser when the old one waits
    between frames: websockets' server parser is a generator that parsed the request and then
    parses frames inside the same frame, which keeps the request and both generator frames
    (~0.65 KiB) for the connection's life. Waiting between frames (the reader's buffer empty,
    in `at_eof` at the top of `Protocol.parse`'s loop) the frame parser carries no state: a new
    one, started, is in the same place. Otherwise (frames came with the request) the old one
    stays."""
    parser = protocol.parser
    frames = getattr(parser, "gi_yieldfrom", None)  # Protocol.parse, under ServerProtocol.parse
    waiting = getattr(frames, "gi_yieldfrom", None)
    if (
        getattr(frames, "gi_code", None) is _FRAME_PARSER_CODE
        and getattr(waiting, "gi_code", None) is _AT_EOF_CODE
        and not protocol.reader.buffer
        and not protocol.reader.eof
    ):
        protocol.parser = WsProtocol.parse(protocol)
        next(protocol.parser)


_FRAME_PARSER_CODE = WsProtocol.parse.__code__
_AT_EOF_CODE = StreamReader.at_eof.__code__


class _ServerConnection(ServerConnection):
    """websockets' connection with a guaranteed cleanup when the handshake does not complete."""

    trio_rt_conn: Connection | None = None
    trio_rt_host: HandshakeHost
    # Nothing received yet, or only a request head `_parse_head_here` took (then `request` is
    # set): set on the instance once websockets' parser reads the request instead.
    trio_rt_fresh = True

    def __init__(
        self,
        nursery: trio.Nursery,
        stream: trio.abc.Stream,
        protocol: ServerProtocol,
        server: Server,
        *,
        ping_interval: float | None = 20,
        ping_timeout: float | None = 20,
        close_timeout: float | None = 10,
        max_queue: int | tuple[int | None, int | None] | None = 16,
    ) -> None:
        """websockets' `ServerConnection.__init__` and `Connection.__init__` (17.x: the same
        attributes, same values), without calling them, for what they would build and throw
        away or what would stay with every connection (docs/performance.md):

        - no `recv_events` task: the handler task reads (`read_events`): one task, its
          frames and the reader's trap less per idle connection (~2 KiB);
        - `LightAssembler` instead of websockets' `Assembler` (same contract, ~2.5 KiB less
          per idle connection, and no memory channel built per connection: ~7 % of a
          handshake's CPU);
        - the send lock exists only while held (`_LazyLock`: an idle connection keeps none);
        - plain TCP is wrapped in `DirectStream` (broadcasts write idle connections
          synchronously).

        The logger is websockets' `LoggerAdapter` with the `websocket` field, as upstream."""
        if isinstance(stream, trio.SocketStream):
            stream = DirectStream(stream)
        self.nursery = nursery
        self.stream = stream
        self.protocol = protocol
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        if isinstance(max_queue, int) or max_queue is None:
            high, low = max_queue, None
        else:
            high, low = max_queue
        protocol.logger = logging.LoggerAdapter(protocol.logger, {"websocket": weakref.proxy(self)})
        self.id = protocol.id
        self.logger = protocol.logger
        self.debug = protocol.debug
        self.request = None
        self.response = None
        self.recv_flow_control = None
        self.recv_messages = LightAssembler(  # type: ignore[assignment]
            high, low, self.pause_reading, self.resume_reading
        )
        self.close_deadline = None
        self.send_lock = _LazyLock(  # type: ignore[assignment]
            stream if isinstance(stream, DirectStream) else None
        )
        self.send_in_progress = None
        self.pending_pings = {}
        self.latency = 0.0
        self.connection_exc = None
        self.stream_closed = trio.Event()
        # ServerConnection's own.
        self.server = server
        self.request_rcvd = trio.Event()

    async def handshake(
        self,
        process_request: Callable[[ServerConnection, WsRequest], Any] | None = None,
        process_response: Callable[[ServerConnection, WsRequest, Response], Any] | None = None,
        server_header: str | None = SERVER,
    ) -> None:
        """websockets' `ServerConnection.handshake` (17.x: same steps, same errors), except
        how it waits for the request: websockets races `request_rcvd` against `stream_closed`
        with a nursery and two tasks per handshake (`race_events`), about 15 % of a
        handshake's CPU here (docs/performance.md). This reads the request in the calling
        task (`read_events`) until it has come or the stream has ended."""
        accepted = False  # process_request let the upgrade go on
        try:
            while self.request is None:  # read in this task: there is no recv_events task
                if not await self.read_events():
                    break
            if self.request is None:
                return  # the stream closed first; websockets' handler closes the rest
            response = None
            if process_request is not None:
                response = await self._call_hook(process_request, self, self.request)
            accepted = response is None
            if accepted and process_response is None and self._upgrade_corked(server_header):
                return
            self.response = self.protocol.accept(self.request) if response is None else response
            if server_header is not None:
                self.response.headers["Server"] = server_header
            if process_response is not None:
                response = await self._call_hook(
                    process_response, self, self.request, self.response
                )
                if response is not None:
                    self.response = response
            if self.response.status_code == HTTPStatus.SWITCHING_PROTOCOLS and self.server.closing:
                self.response = self.protocol.reject(
                    HTTPStatus.SERVICE_UNAVAILABLE, "Server is shutting down.\n"
                )
            if self.state is CONNECTING:
                stream = self.stream
                if (
                    self.response.status_code == HTTPStatus.SWITCHING_PROTOCOLS
                    and isinstance(stream, DirectStream)
                    and stream.idle
                    and not stream.corking
                    and not self.send_lock.locked()
                ):
                    # The upgrade, corked: it goes out with the welcome in one non-blocking
                    # send when `Connection.run` starts (no checkpoint in between; run
                    # flushes it even without a welcome). websockets' send_context (a lock, a
                    # context manager, trio's send_all) was ~10 % of a handshake's CPU, a
                    # system call of its own ~6 %. A broken socket is the reader's to see.
                    self.protocol.send_response(self.response)
                    stream.cork(b"".join(self.protocol.data_to_send()))
                elif self.protocol.handshake_exc is not None:
                    # A hook failed (500): websockets' send_context would then wait for the
                    # client to close, up to close_timeout, which its reader task would see.
                    # There is none: write the answer and its EOF, and let the connection end.
                    self.protocol.send_response(self.response)
                    try:
                        await self.send_data()
                    except Exception as exc:
                        self.set_connection_exc(exc)
                else:
                    async with self.send_context(expected_state=CONNECTING):
                        self.protocol.send_response(self.response)
        finally:
            conn = self.trio_rt_conn
            if self.protocol.state is OPEN:
                # Nobody reads the request or the response after the handshake; their headers
                # are ~1 KiB a connection each (conn.request keeps a compact copy). The
                # request's headers are emptied too: websockets' parser generator keeps the
                # request in a local for the connection's life.
                if self.request is not None:
                    self.request.headers.clear()
                    self.request = None
                self.response = None
                # Set for good: a shared set Event instead of this one (~280 bytes).
                self.request_rcvd = _REQUEST_RECEIVED
                _restart_frame_parser(self.protocol)
            elif conn is not None:
                # Rejected, abandoned, timed out: undo the registration made for the handler.
                with trio.CancelScope(shield=True):
                    await self.trio_rt_host.handshake_abandoned(conn, accepted)

    def _upgrade_corked(self, server_header: str | None) -> bool:
        """The upgrade's fast path: websockets' `accept` and `send_response` for a valid
        request, with the 101 response written as bytes (`_upgrade_response`: the same bytes,
        the Date cached per second) instead of a `Headers` and `Response` built and serialized,
        and corked: it goes out with the welcome in one write (`Connection.run` flushes it).
        About 5 % of a handshake's CPU (docs/performance.md).

        False, with nothing changed but the negotiation's results, when websockets' path must
        answer: an invalid request (`accept` checks it again and answers it: 400, 405, 426,
        500...), a server shutting down (503), debug logging (websockets logs the response's
        headers), a stream that cannot take the upgrade corked."""
        protocol = self.protocol
        stream = self.stream
        if (
            self.server.closing
            or protocol.debug
            or protocol.state is not CONNECTING
            or not isinstance(stream, DirectStream)
            or not stream.idle
            or stream.corking
            or self.send_lock.locked()
        ):
            return False
        assert self.request is not None
        try:
            negotiated = _process_upgrade(protocol, self.request)
            if negotiated is None:
                negotiated = protocol.process_request(self.request)
        except Exception:
            return False
        accept, extensions, subprotocol = negotiated
        protocol.accept_called = True
        stream.cork(_upgrade_response(accept, extensions, subprotocol, server_header))
        # send_response's steps for a 101 (its write is the cork above).
        protocol.state = OPEN
        protocol.logger.info("connection open")
        return True

    async def _call_hook(self, hook: Callable[..., Any], *args: Any) -> Response | None:
        """Call process_request / process_response as websockets does: sync or async; an
        exception is logged and answered with HTTP 500."""
        try:
            response = hook(*args)
            if inspect.isawaitable(response):
                response = await response
        except Exception as exc:
            self.protocol.handshake_exc = exc
            self.logger.error("%s failed", getattr(hook, "__name__", "hook"), exc_info=True)
            return self.protocol.reject(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                "Failed to open a WebSocket connection.\nSee server log for more information.\n",
            )
        assert response is None or isinstance(response, Response)
        return response

    @property
    def messages_queued(self) -> int:
        """Frames received and not yet taken by `recv` (a whole message or the start of one)."""
        return len(self.recv_messages)  # type: ignore[arg-type]

    async def read_events(self) -> bool:
        """One pass of websockets' `recv_events` loop (17.x: the same steps, errors and
        order), in the caller's task: wait while flow control pauses reading, read once,
        feed the protocol, write what it answers (pongs, the close frame, EOF), set the
        close deadline, process the events (data frames go to `recv_messages`, pongs to the
        heartbeat). At the end of the stream (EOF, a closed or broken socket, a failed
        write) it does what `recv_events` does after its loop, closes the stream
        (`close_stream`: the connection is CLOSED, `recv` raises ConnectionClosed) and
        returns False; True while the stream goes on.

        Exactly one task calls it for the connection's whole life: the handshake, then
        `Connection.run` (websockets' handler task). A caller cancelled in it (a server
        shutting down) must call `close_stream` itself."""
        try:
            try:
                if self.recv_flow_control is not None:
                    await self.recv_flow_control.wait()
                data = await self.stream.receive_some()
            except trio.ClosedResourceError:
                data = b""
            except Exception as exc:
                if self.debug:
                    self.logger.debug("! error while receiving data", exc_info=True)
                self.set_connection_exc(exc)  # unless send_context set it first
                data = b""
            if data:
                protocol = self.protocol
                if (
                    self.request is None  # the handshake (once open, request is None again)
                    and protocol._state is CONNECTING
                    and self._parse_head_here(data)
                ):
                    return True
                protocol.receive_data(data)
                events = protocol.events_received()
                try:
                    # Only when the protocol answered something (a pong, a close frame): with
                    # nothing to write, upstream's send_data takes the send lock for nothing
                    # (a trio.Lock built per read here: ~4 % of a handshake's CPU).
                    if protocol.writes:
                        await self.send_data()
                except Exception as exc:
                    if self.debug:
                        self.logger.debug("! error while sending data", exc_info=True)
                    self.set_connection_exc(exc)  # events are lost, as upstream: the end
                else:
                    if (
                        protocol.close_expected()
                        and self.close_deadline is None
                        and self.close_timeout is not None
                    ):
                        self.close_deadline = trio.current_time() + self.close_timeout
                    for event in events:
                        self.process_event(event)
                    return True
            # The stream is over: feed its end to the protocol (the close state, 1006).
            self.protocol.receive_eof()
            events = self.protocol.events_received()
            await self.send_data()
            for event in events:  # pragma: no cover - only for HTTP responses (clients)
                self.process_event(event)
        except Exception as exc:
            # Never expected (upstream's safety net).
            self.logger.error("unexpected internal error", exc_info=True)
            self.set_connection_exc(exc)
        await self.close_stream()
        return False

    def _parse_head_here(self, data: bytes | bytearray) -> bool:
        """The request's fast path (while CONNECTING, no request yet): when `data` is the
        first thing the connection received and is one whole request head that
        `parse_request_head` parses (what a client sends), take the request as websockets'
        parser would have delivered it (`process_event`) and give the protocol a frame parser,
        as websockets' own does once the request is parsed. False, with nothing done, when
        websockets' parser must read `data` (and, from then on, the rest of the request). Not
        with debug logging: websockets logs the request's lines."""
        protocol = self.protocol
        if not self.trio_rt_fresh or protocol.debug:
            return False
        request = parse_request_head(data)
        if request is None:
            self.trio_rt_fresh = False  # websockets parses this connection's request
            return False
        # ServerProtocol.parse's steps after the request (its events are the request alone).
        protocol.parser = WsProtocol.parse(protocol)
        next(protocol.parser)
        self.process_event(request)
        return True

    async def close_stream(self) -> None:
        try:
            await super().close_stream()
        finally:
            self.request_rcvd.set()  # a handshake still waiting for the request: it never comes

    def process_event(self, event: Any) -> None:
        # Pongs answer the manager's heartbeat pings (sent without websockets' ping(), which
        # keeps an Event per ping); websockets ignores pongs it did not ask for.
        if isinstance(event, Frame):
            if event.opcode is Opcode.PONG:
                conn = self.trio_rt_conn
                if conn is not None:
                    conn.heartbeat_pong(bytes(event.data))
            # Frames skip ServerConnection.process_event: it tells the request from frames by
            # `self.request is None`, and the request is dropped once open (see handshake).
            WsConnection.process_event(self, event)
        else:
            super().process_event(event)

"""The websockets edge: trio_rt's subclass of websockets' Trio server connection, and
`start_websockets_server`, which runs websockets' server with it.

What the subclass changes, and why (docs/architecture.md, docs/performance.md):

- the socket is wrapped in `DirectStream`, so broadcasts write idle connections synchronously;
- websockets' frame queue is replaced by `LightAssembler` (same contract, less memory);
- the handshake waits for the request on one event instead of two tasks in a nursery;
- pongs go to the connection's heartbeat (`Connection.heartbeat_pong`);
- a reference cycle is broken when the handshake ends, so closed connections are freed by
  reference counting, and a connection that never upgraded is handed back to the server's
  handshake part (`HandshakeHost.handshake_abandoned`) for cleanup.

It knows trio_rt's side only through `trio_rt_conn` (the `Connection` being handshaken,
set by the handshake part) and `trio_rt_host` (a `HandshakeHost`, set on the class bound for
one server by `start_websockets_server`).

It mirrors websockets 17.x's `ServerConnection.handshake` and relies on attributes websockets
does not document; tests/engine/test_websockets_internals.py lists them and fails when the mirrored
upstream code changes (pyproject.toml pins websockets to the tested range).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

import trio
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import SERVER, Response
from websockets.http11 import Request as WsRequest
from websockets.protocol import CONNECTING, OPEN
from websockets.server import ServerProtocol
from websockets.trio.connection import Connection as WsConnection
from websockets.trio.messages import Assembler
from websockets.trio.server import Server, ServerConnection
from websockets.trio.server import serve as ws_serve
from websockets.typing import Subprotocol

from .._core.options import ServerOptions
from .assembler import LightAssembler
from .direct_stream import DirectStream

if TYPE_CHECKING:
    from .._engine.connection import Connection

__all__ = ["HandshakeHost", "_ServerConnection", "start_websockets_server"]


class HandshakeHost(Protocol):
    """The handshake's decisions: websockets' two hooks, and what the connection calls back
    when a handshake ends without an upgrade (trio_rt's `HandshakeAdmission`)."""

    async def process_request(self, ws: ServerConnection, request: WsRequest) -> Response | None:
        """websockets' `process_request`: None lets the upgrade go on."""

    def select_subprotocol(
        self, ws: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        """websockets' `select_subprotocol`."""

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
    (its `aclose` stops the listener). Pings are trio_rt's heartbeat, not websockets'."""
    o = options
    conn_class = type("_BoundServerConnection", (_ServerConnection,), {"trio_rt_host": host})
    server: Server = await nursery.start(
        functools.partial(
            ws_serve,
            handler,
            listeners=listeners,
            compression=None,
            extensions=_deflate(o),
            select_subprotocol=host.select_subprotocol,
            process_request=host.process_request,
            server_header="trio_rt",
            open_timeout=o.handshake_timeout,
            ping_interval=None,  # trio_rt's heartbeat schedule does it, for all
            ping_timeout=None,
            close_timeout=o.close_timeout,
            max_size=o.max_message_size,
            max_queue=16,
            logger=logging.getLogger("trio_rt.websockets"),
            create_connection=conn_class,
        )
    )
    return server


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


class _ServerConnection(ServerConnection):
    """websockets' connection with a guaranteed cleanup when the handshake does not complete."""

    trio_rt_conn: Connection | None = None
    trio_rt_host: HandshakeHost

    def __init__(
        self,
        nursery: trio.Nursery,
        stream: trio.abc.Stream,
        protocol: ServerProtocol,
        server: Server,
        **kwargs: Any,
    ) -> None:
        # Plain TCP: let broadcasts write idle connections synchronously
        # (_transport/direct_stream.py).
        if isinstance(stream, trio.SocketStream):
            stream = DirectStream(stream)
        super().__init__(nursery, stream, protocol, server, **kwargs)
        # A lighter frame queue than websockets' (same contract, ~2.5 KiB less per idle
        # connection: _transport/assembler.py); only over the implementation it was written against.
        # The send lock exists only while held: an idle connection keeps none (~340 bytes).
        self.send_lock = _LazyLock(  # type: ignore[assignment]
            stream if isinstance(stream, DirectStream) else None
        )
        assembler = self.recv_messages
        if type(assembler) is Assembler:
            self.recv_messages = LightAssembler(  # type: ignore[assignment]
                assembler.high, assembler.low, self.pause_reading, self.resume_reading
            )

    async def handshake(
        self,
        process_request: Callable[[ServerConnection, WsRequest], Any] | None = None,
        process_response: Callable[[ServerConnection, WsRequest, Response], Any] | None = None,
        server_header: str | None = SERVER,
    ) -> None:
        """websockets' `ServerConnection.handshake` (17.x: same steps, same errors), except
        how it waits for the request: websockets races `request_rcvd` against `stream_closed`
        with a nursery and two tasks per handshake (`race_events`), about 15 % of a
        handshake's CPU here (docs/performance.md). This waits on `request_rcvd` alone, which
        `close_stream` also sets when the connection ends before a request came."""
        accepted = False  # process_request let the upgrade go on
        try:
            await self.request_rcvd.wait()
            if self.request is None:
                return  # the stream closed first; websockets' handler closes the rest
            response = None
            if process_request is not None:
                response = await self._call_hook(process_request, self, self.request)
            accepted = response is None
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
                    and not self.send_lock.locked()
                ):
                    # The upgrade, written with one non-blocking send: websockets'
                    # send_context (a lock, a context manager, trio's send_all) was ~10 % of
                    # a handshake's CPU. A socket broken meanwhile is the reader's to see.
                    self.protocol.send_response(self.response)
                    if stream.send_now(b"".join(self.protocol.data_to_send())) and stream.pending:
                        async with self.send_lock:  # what the kernel did not take, first
                            await stream.send_all(b"")
                else:
                    async with self.send_context(expected_state=CONNECTING):
                        self.protocol.send_response(self.response)
        finally:
            # The handshake is over: drop websockets' select_subprotocol closure, a reference
            # cycle (protocol -> closure -> connection -> protocol) that would leave every
            # closed connection to the cyclic GC.
            vars(self.protocol).pop("select_subprotocol", None)
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
            elif conn is not None:
                # Rejected, abandoned, timed out: undo the registration made for the handler.
                with trio.CancelScope(shield=True):
                    await self.trio_rt_host.handshake_abandoned(conn, accepted)

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

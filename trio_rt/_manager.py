"""WebSocketManager: the server, its rooms, broadcasts and handlers."""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response
from websockets.trio.server import Server, ServerConnection
from websockets.trio.server import serve as ws_serve
from websockets.typing import Subprotocol

from ._admission import MessageAdmission
from ._broker import Broker, MemoryBroker
from ._caps import ConnectionCaps
from ._connection import Connection
from ._direct_stream import FlushQueue
from ._envelope import (
    KIND_KICK,
    KIND_SERVER,
    Envelope,
    decode_envelope,
    encode_envelope,
    recipients,
    unique_rooms,
)
from ._heartbeat import Beat, HeartbeatSchedule
from ._http import HttpHandler, HttpResponse, Reject, is_websocket_upgrade, to_ws_response
from ._options import ServerOptions
from ._outbox import OutboundMessage
from ._permissions import PermissionStore
from ._protocol import (
    BUILTIN_TYPES,
    ClientMessage,
    CloseCode,
    Command,
    ErrorCode,
    History,
    JoinRoom,
    Kick,
    LeaveRoom,
    Ping,
    ProtocolError,
    Refresh,
    StreamPosition,
    Subscribe,
    Unsubscribe,
    encode,
    error_message,
    parse,
    reply,
    validate_room_name,
)
from ._ratelimit import RateLimiter
from ._room_order import RoomOrdering
from ._rooms import Room, RoomError, RoomRegistry
from ._static import CLIENT_JS_PATH, client_js_route
from ._streams import Recovery
from ._timers import Timers
from ._ws_connection import _ServerConnection

if TYPE_CHECKING:
    from ._changes import ChangeStreamManager
    from ._history import RoomHistory
    from ._room_store import RoomStore

if TYPE_CHECKING:
    from ._auth import JWTAuthenticator

__all__ = ["ServerStats", "WebSocketManager"]

log = logging.getLogger("trio_rt")

ConnectionHandler = Callable[[Connection], Awaitable[None]]
DisconnectHandler = Callable[[Connection, int], Awaitable[None]]
MessageHandler = Callable[[Connection, dict[str, Any]], Awaitable[None]]
ErrorHandler = Callable[[Connection, Exception], Awaitable[None]]
ServerMessageHandler = Callable[[dict[str, Any], str], Awaitable[None]]
Service = Callable[..., Awaitable[None]]  # async fn(*, task_status) run in the manager's nursery
BuiltinHandler = Callable[[Connection, Any], Awaitable[None]]
SERVER_INBOX_SIZE = 1000  # cross-server messages waiting for their handlers
# What `authorize` grants when no PermissionStore is configured: the open server of before.
# `moderate` (and any other action) needs a store; private rooms always need a grant.
OPEN_ACTIONS = frozenset({"join", "read", "broadcast"})
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class ServerStats:
    """Counters since start; WebSocketMetrics turns them into rates and Prometheus series."""

    started_at: float = field(default_factory=time.time)
    connections_opened: int = 0
    connections_closed: int = 0
    handshakes_rejected: dict[str, int] = field(default_factory=dict)
    messages_in: int = 0
    messages_out: int = 0
    broadcasts: int = 0
    deliveries: int = 0
    slow_consumers: int = 0
    dropped_messages: int = 0
    heartbeat_timeouts: int = 0
    handler_errors: int = 0
    protocol_errors: int = 0
    rate_limited: int = 0  # messages refused by the rate limits
    tokens_expired: int = 0  # connections closed with 4004
    reorder_skipped: int = 0  # room offsets passed without delivery (not in the store, or unread)
    reorder_late: int = 0  # room messages delivered after a greater offset (hole skipped)
    reorder_healed: int = 0  # room messages found by store reads (holes, broker breaks)
    reorder_duplicates: int = 0  # room messages dropped: delivered already, or before the start
    room_gaps: int = 0  # room_gap notices: ranges skipped without the store's answer

    def rejected(self, reason: str) -> None:
        self.handshakes_rejected[reason] = self.handshakes_rejected.get(reason, 0) + 1


class _Instruments(Protocol):
    """What WebSocketMetrics observes at the manager's instrumentation points (trio_rt._metrics).

    Called once per app handler call and once per broadcast delivered, never per recipient.
    """

    def handler_finished(self, type: str, seconds: float) -> None: ...

    def fanned_out(self, recipients: int, seconds: float) -> None: ...


class _DebugLogAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Logs what websockets logs at INFO at DEBUG instead (other levels unchanged)."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG if level == logging.INFO else level, msg, *args, **kwargs)


_QUIET_HTTP_LOG = _DebugLogAdapter(logging.getLogger("trio_rt.websockets"), {})


class WebSocketManager:
    """A WebSocket server with rooms and broadcasts, run inside the caller's Trio nursery.

    Use either form::

        async with WebSocketManager(port=3001) as manager:    # serves inside the block
            ...
        # or
        host, port = await nursery.start(manager.serve)

    Ownership: `serve` owns one nursery with the broker, the listener, the heartbeat schedule
    and every connection; each connection reads in its own task and owns the writer and closing
    tasks it starts when needed. When `serve` is cancelled (or
    `stop()` is called) it shuts down gracefully: new handshakes get HTTP 503, every client gets
    what is already queued then close code 1001, bounded by `shutdown_timeout`; then whatever is
    left is cancelled. Nothing started by the manager outlives `serve`.

    Handlers are coroutines registered with decorators: `on_connection` (during the handshake:
    may raise `Reject`), `on_message(type)`, `on_disconnect` (always runs for an accepted
    connection, with its close code), `on_error` (an exception in a message handler; the client
    gets an `error` reply and the connection stays open).

    Security (docs/security.md): `auth` (a `JWTAuthenticator`) authenticates handshakes, closes
    connections whose token expired (4004) and accepts in-band `refresh`; `permissions` (a
    `PermissionStore`) answers `authorize`; `rate_limiter` keeps the rate-limit buckets (default:
    in this process; `RedisRateLimiter` shares them across servers).
    """

    def __init__(
        self,
        *,
        broker: Broker | None = None,
        welcome: Callable[[Connection], dict[str, Any] | None] | None = None,
        history: RoomHistory | None = None,
        room_store: RoomStore | None = None,
        auth: JWTAuthenticator | None = None,
        permissions: PermissionStore | None = None,
        rate_limiter: RateLimiter | None = None,
        **options: Any,
    ) -> None:
        unknown = set(options) - ServerOptions.names()
        if unknown:
            raise TypeError(f"unknown WebSocketManager option(s): {', '.join(sorted(unknown))}")
        self.options = ServerOptions(**options)
        self.server_id: str = self.options.server_id or uuid.uuid4().hex[:12]
        self.broker: Broker = broker if broker is not None else MemoryBroker()
        self._welcome = welcome if welcome is not None else self._default_welcome
        self._rooms: RoomRegistry[Connection] = RoomRegistry(
            auto_create=self.options.auto_create_rooms
        )
        self._connections: dict[str, Connection] = {}
        self._connection_handlers: list[ConnectionHandler] = []
        self._disconnect_handlers: list[DisconnectHandler] = []
        self._error_handlers: list[ErrorHandler] = []
        self._message_handlers: dict[str, MessageHandler] = {}
        self._fallback_handler: MessageHandler | None = None
        self._routes: dict[str, HttpHandler] = {"/health": self._health}
        if self.options.serve_client_js:
            self._routes[CLIENT_JS_PATH] = client_js_route  # the browser client (_static.py)
        self._pending_subscriptions: dict[str, trio.Event] = {}
        self._stats = ServerStats()
        self._instruments: _Instruments | None = None  # set by WebSocketMetrics
        self._closing = False
        self._running = False
        self._stop = trio.Event()
        self._address: tuple[str, int] | None = None
        prefix = self.options.channel_prefix
        self._all_channel = f"{prefix}:all"
        self._servers_channel = f"{prefix}:servers"
        self._server_message_handlers: list[ServerMessageHandler] = []
        self._server_inbox: trio.MemorySendChannel[tuple[dict[str, Any], str]] | None = None
        self._room_prefix = f"{prefix}:room:"
        self.history = history
        self.room_store = room_store
        self._services: list[Service] = list(history.services()) if history is not None else []
        self._service_nursery: trio.Nursery | None = None
        self._builtins: dict[type, BuiltinHandler] = {}
        self._channel_handlers: dict[str, Callable[[bytes], None]] = {}
        self._change_streams: ChangeStreamManager | None = None  # set by ChangeStreamManager
        # -- security state --
        self.permissions: PermissionStore | None = permissions
        self._auth = auth
        if auth is not None:
            self._connection_handlers.append(auth)  # first: later handlers see the user
        self._admission = MessageAdmission(self.options, rate_limiter, self._stats)
        self._rate_limiter = self._admission.limiter
        o = self.options
        self._caps = ConnectionCaps(o.max_connections_per_ip, o.max_connections_per_user)
        self._room_fields: dict[str, tuple[str, ...]] = {}  # type -> path of its target room
        # Token expiry: one heap and one task for the whole server, not a timer per connection.
        self._expiry_timers = Timers[str]()  # connection id -> when its token expires
        self._heartbeats: HeartbeatSchedule[Connection] | None = None  # while serving
        # when sends are corked, and the connections whose corked frames one task writes
        self._flushes = FlushQueue[Connection]()
        self._heartbeat_lot = trio.lowlevel.ParkingLot()
        self._heartbeat_wake_at = math.inf
        # Rooms with history: their messages in offset order, each once (one buffer per room);
        # after a break in the broker's subscriptions they re-read what they may have missed.
        self._order = RoomOrdering(
            self._fan_out_positioned, self._stats, self._room_gap, history, self._send_to_member
        )
        self.broker.on_resubscribed(self._order.resync)

    # -- handler registration -----------------------------------------------------------------
    def on_connection(self, fn: ConnectionHandler) -> ConnectionHandler:
        """Register `async def handler(conn)`, run during the handshake, before the upgrade.

        `conn.request` has the path, query, headers and peer. Raise `Reject(status, reason)` to
        answer with an HTTP error instead of upgrading. Set `conn.user_id` / `conn.state` here,
        join rooms, queue messages (they follow the welcome).
        """
        self._connection_handlers.append(_check_coroutine(fn))
        return fn

    def on_disconnect(self, fn: DisconnectHandler) -> DisconnectHandler:
        """Register `async def handler(conn, close_code)`; runs once per accepted connection."""
        self._disconnect_handlers.append(_check_coroutine(fn))
        return fn

    def on_error(self, fn: ErrorHandler) -> ErrorHandler:
        """Register `async def handler(conn, exc)` for exceptions raised by message handlers."""
        self._error_handlers.append(_check_coroutine(fn))
        return fn

    def on_message(
        self, type: str | None = None, *, room_field: str | None = None
    ) -> Callable[[MessageHandler], MessageHandler]:
        """Register `async def handler(conn, message)` for client messages of `type`.

        Without `type`, the handler receives every message whose type has no handler of its
        own (instead of an `unknown_type` error). Handlers of one connection run one at a time,
        in arrival order; start long work in a nursery of your own.

        `room_field` (e.g. ``"room"`` or ``"payload.room"``, dots walk nested objects) marks a
        client-initiated broadcast: before the handler runs, the manager checks that the field
        holds a valid room name (`invalid_field` otherwise) and that the sender may
        ``broadcast`` to ``room:<name>`` (`not_permitted` otherwise; see `authorize`).
        """
        if type is not None and type in BUILTIN_TYPES:
            raise ValueError(f"{type!r} is a built-in message type")
        if room_field is not None:
            if type is None:
                raise ValueError("room_field needs a message type")
            path = tuple(room_field.split("."))
            if not all(path):
                raise ValueError(f"invalid room_field {room_field!r}")
            self._room_fields[type] = path

        def register(fn: MessageHandler) -> MessageHandler:
            _check_coroutine(fn)
            if type is None:
                self._fallback_handler = fn
            else:
                self._message_handlers[type] = fn
            return fn

        return register

    def on(self, event: str, type: str | None = None) -> Callable[[F], F]:
        """Seed-style registration: ``@manager.on("connection" | "message" | "disconnect" |
        "error" | "cross_server_message")``. For "message", `type` selects the message type
        (None: all unhandled)."""

        def register(fn: F) -> F:
            if event == "connection":
                self.on_connection(fn)
            elif event == "disconnect":
                self.on_disconnect(fn)
            elif event == "error":
                self.on_error(fn)
            elif event == "message":
                self.on_message(type)(fn)
            elif event == "cross_server_message":
                self.on_cross_server_message(fn)
            else:
                raise ValueError(f"unknown event {event!r}")
            return fn

        return register

    def on_cross_server_message(self, fn: ServerMessageHandler) -> ServerMessageHandler:
        """Register `async def handler(message: dict, origin_server_id: str)` for messages
        other servers send with `send_to_servers` (the seed's ``cross_server_message``).

        Broadcasts to clients already reach every server by themselves; this is for the app's
        own coordination (cache invalidation, config reloads). Handlers run one at a time in
        a task of the manager; at most 1,000 messages wait for them, newer ones are dropped
        (and logged) beyond that.
        """
        self._server_message_handlers.append(_check_coroutine(fn))
        return fn

    async def send_to_servers(self, data: dict[str, Any]) -> None:
        """Send `data` to the cross-server message handlers of every other server."""
        env = Envelope(encode(data), kind=KIND_SERVER, origin=self.server_id)
        await self.broker.publish(self._servers_channel, encode_envelope(env))

    def route(self, path: str) -> Callable[[HttpHandler], HttpHandler]:
        """Serve plain HTTP GETs of `path` on the WebSocket port (health, metrics, files)."""
        if not path.startswith("/"):
            raise ValueError("route paths start with '/'")

        def register(fn: HttpHandler) -> HttpHandler:
            self._routes[path] = fn
            return fn

        return register

    def add_service(self, service: Service) -> None:
        """Run ``await service(task_status=...)`` in the manager's nursery while it serves.

        Services added before `serve` start before the listener opens (the server is ready
        once each has called ``task_status.started()``); added while serving, they start at
        once. They are cancelled after the connections have closed, at the end of a graceful
        shutdown.
        """
        if self._service_nursery is not None:
            self._service_nursery.start_soon(service)
        else:
            self._services.append(service)

    def _on_channel(self, channel: str, handler: Callable[[bytes], None]) -> None:
        """Let a component receive the raw messages of a broker channel (sync, never blocks)."""
        self._channel_handlers[channel] = handler

    def _set_builtin(self, command: type, handler: BuiltinHandler) -> None:
        """Let a component (the change streams) handle a built-in command type."""
        self._builtins[command] = handler

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); port 0 in the options becomes the real port."""
        if self._address is None:
            raise RuntimeError("the manager is not serving")
        return self._address

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def url(self) -> str:
        host, port = self.address
        return f"ws://{host}:{port}/"

    async def __aenter__(self) -> WebSocketManager:
        self._cm = self._serving()
        return await self._cm.__aenter__()

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._cm.__aexit__(*exc)

    @asynccontextmanager
    async def _serving(self) -> AsyncIterator[WebSocketManager]:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.serve)
            try:
                yield self
            finally:
                self.stop()

    def stop(self) -> None:
        """Ask `serve` to shut down gracefully (also what cancelling `serve` does)."""
        self._stop.set()

    async def serve(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled or `stop()`; then shut down gracefully.

        `task_status.started((host, port))` reports readiness with the bound address.
        """
        if self._running:
            raise RuntimeError("this WebSocketManager is already serving")
        self._running = True
        # The server's own tasks run in a shielded scope: a cancellation from outside must not
        # hit the connections before they are closed gracefully. This task watches instead.
        inner = trio.CancelScope(shield=True)
        try:
            async with trio.open_nursery() as guard:
                ws_server: Server = await guard.start(self._run_inner, inner)
                task_status.started(self.address)
                try:
                    await self._stop.wait()
                finally:
                    with trio.CancelScope(shield=True):
                        try:
                            await self._shutdown(ws_server)
                        finally:
                            inner.cancel()
        finally:
            self._running = False
            self._address = None
            self._service_nursery = None

    async def _run_inner(
        self, scope: trio.CancelScope, *, task_status: trio.TaskStatus[Server]
    ) -> None:
        o = self.options
        with scope:
            async with contextlib.AsyncExitStack() as stack:
                if getattr(self.broker, "needs_asyncio", False) or getattr(
                    self._rate_limiter, "needs_asyncio", False
                ):
                    # One trio-asyncio loop for every asyncio-based component of this server.
                    from .redis._aio import ensure_loop

                    await stack.enter_async_context(ensure_loop())
                if hasattr(self._rate_limiter, "aclose"):
                    stack.push_async_callback(self._close_rate_limiter)
                nursery = await stack.enter_async_context(trio.open_nursery())
                await nursery.start(self.broker.run, self._on_broker_message)
                await self.broker.subscribe(self._all_channel)
                send, receive = trio.open_memory_channel[tuple[dict[str, Any], str]](
                    SERVER_INBOX_SIZE
                )
                self._server_inbox = send
                nursery.start_soon(self._run_server_message_handlers, receive)
                nursery.start_soon(self._expiry_timers.run, self._token_expired)
                await nursery.start(self._flushes.run)
                await self.broker.subscribe(self._servers_channel)
                if self.room_store is not None:
                    for settings in await self.room_store.load():
                        self._rooms.create(
                            settings.name,
                            max_users=settings.max_users,
                            persistent=True,
                            moderators=settings.moderators,
                            private=settings.private,
                        )
                if self.history is not None:
                    self.history.check_deployment(self.broker)
                    nursery.start_soon(self._order.run)
                for service in self._services:
                    await nursery.start(service)
                self._service_nursery = nursery
                if o.heartbeat_interval is not None:
                    assert o.heartbeat_timeout is not None
                    schedule = HeartbeatSchedule[Connection](
                        o.heartbeat_interval, o.heartbeat_timeout
                    )
                    self._heartbeats = schedule
                    nursery.start_soon(self._run_heartbeats, schedule)
                if o.gc_freeze_interval is not None:
                    nursery.start_soon(self._run_gc_freezer, o.gc_freeze_interval)
                listeners = await trio.open_tcp_listeners(o.port, host=o.host)
                sockname = listeners[0].socket.getsockname()
                self._address = (str(sockname[0]), int(sockname[1]))
                conn_class = type(
                    "_BoundServerConnection", (_ServerConnection,), {"trio_rt_manager": self}
                )
                server: Server = await nursery.start(
                    functools.partial(
                        ws_serve,
                        self._ws_handler,
                        listeners=listeners,
                        compression=None,
                        extensions=_deflate(o),
                        select_subprotocol=self._select_subprotocol,
                        process_request=self._process_request,
                        server_header="trio_rt",
                        open_timeout=o.handshake_timeout,
                        ping_interval=None,  # our heartbeat schedule does it, for all
                        ping_timeout=None,
                        close_timeout=o.close_timeout,
                        max_size=o.max_message_size,
                        max_queue=16,
                        logger=logging.getLogger("trio_rt.websockets"),
                        create_connection=conn_class,
                    )
                )
                log.info("trio_rt server %s listening on %s:%d", self.server_id, *self._address)
                task_status.started(server)

    async def _close_rate_limiter(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(self.options.close_timeout):
            await self._rate_limiter.aclose()  # type: ignore[attr-defined]

    # -- heartbeat --------------------------------------------------------------------------------
    async def _run_heartbeats(self, schedule: HeartbeatSchedule[Connection]) -> None:
        """Ping every connection each heartbeat_interval; close (4001) those whose pong is
        later than heartbeat_timeout. One task for the whole server (`_heartbeat.py`).

        Due pings and deadlines are handled in batches: the task sleeps until the earliest
        one plus 1 % of min(interval, timeout), so a ping or a timeout is at most that late
        (never early), and 10,000 connections cost tens of wake-ups a second, not thousands.
        """
        slack = min(schedule.interval, schedule.timeout) / 100
        try:
            while True:
                pings, timeouts = schedule.poll(trio.current_time())
                for beat in pings:
                    conn = beat.item
                    assert conn is not None and beat.payload is not None
                    try:
                        conn._send_ping(beat.payload)
                    except Exception:  # one connection's failure must not stop the others
                        log.exception("heartbeat ping failed for %r", conn)
                for conn in timeouts:
                    conn._heartbeat_timeout()
                nxt = schedule.next_time()
                self._heartbeat_wake_at = math.inf if nxt is None else nxt + slack
                with trio.move_on_at(self._heartbeat_wake_at):
                    await self._heartbeat_lot.park()
        finally:
            self._heartbeats = None
            self._heartbeat_wake_at = math.inf

    async def _run_gc_freezer(self, interval: float) -> None:
        """The `gc_freeze_interval` option: keep long-lived objects out of automatic GC runs.

        Every `interval` s: collect generations 0-1, then `gc.freeze()` what survives (the
        connections, rooms, the app's own long-lived state). Automatic collections then only
        traverse what is younger than the last freeze: at 10,000 connections a full
        collection otherwise walks ~1 million objects and blocks the loop for ~1 s, every
        few seconds (docs/performance.md). Frozen objects are still freed by reference
        counting; frozen *cyclic* garbage waits for every 10th round, which unfreezes and
        runs a full collection first. On exit everything is unfrozen (gc.unfreeze()).
        """
        rounds = 0
        try:
            gc.collect(1)
            gc.freeze()
            while True:
                await trio.sleep(interval)
                rounds += 1
                if rounds % 10 == 0:
                    gc.unfreeze()
                    gc.collect()
                else:
                    gc.collect(1)
                gc.freeze()
        finally:
            gc.unfreeze()

    def _heartbeat_add(self, conn: Connection) -> Beat[Connection] | None:
        """Put an opened connection on the heartbeat schedule (None: heartbeats are off)."""
        schedule = self._heartbeats
        if schedule is None:
            return None
        now = trio.current_time()
        beat = schedule.add(conn, now)
        if now + schedule.interval < self._heartbeat_wake_at:
            self._heartbeat_lot.unpark_all()  # the task sleeps past this one's first ping
        return beat

    async def _shutdown(self, ws_server: Server) -> None:
        self._closing = True
        log.info("trio_rt server %s shutting down", self.server_id)
        with trio.move_on_after(self.options.shutdown_timeout):
            async with trio.open_nursery() as nursery:
                # Stops the listener, answers handshakes in progress with 503, waits for handlers.
                nursery.start_soon(functools.partial(ws_server.aclose, close_connections=False))
                for conn in list(self._connections.values()):
                    nursery.start_soon(conn.close, CloseCode.GOING_AWAY, "server shutting down")

    # -- handshake and connection ---------------------------------------------------------------
    async def _process_request(self, ws: ServerConnection, request: WsRequest) -> Response | None:
        if not is_websocket_upgrade(request):
            # Plain HTTP (health checks, /metrics, app routes polled every few seconds):
            # websockets' "HTTP response sent" and "connection closed" lines go to DEBUG.
            ws.protocol.logger = ws.logger = _QUIET_HTTP_LOG
            return await self._http(request)
        o = self.options
        if self._closing:
            self._stats.rejected("shutting_down")
            return to_ws_response(
                HttpResponse.json(503, {"error": "server shutting down"}, **{"Retry-After": "1"})
            )
        if o.allowed_origins is not None and not self._origin_allowed(request):
            self._stats.rejected("origin")
            return to_ws_response(HttpResponse.json(403, {"error": "origin not allowed"}))
        limit = o.max_connections
        if limit is not None and len(self._connections) >= limit:
            self._stats.rejected("server_full")
            return to_ws_response(
                HttpResponse.json(503, {"error": "server full"}, **{"Retry-After": "5"})
            )
        assert isinstance(ws, _ServerConnection)
        conn = Connection(self, ws)
        ip = conn.request.remote_address[0] if conn.request.remote_address else None
        if self._caps.ip_full(ip):
            self._stats.rejected("ip_limit")
            return to_ws_response(
                HttpResponse.json(
                    429, {"error": "too many connections from this address"}, **{"Retry-After": "5"}
                )
            )
        self._connections[conn.id] = conn
        ws.trio_rt_conn = conn
        self._caps.count_ip(conn.id, ip)
        try:
            for handler in self._connection_handlers:
                await handler(conn)
            if self._caps.user_full(conn.user_id):
                raise Reject(429, "too many connections for this user", **{"Retry-After": "5"})
            self._caps.count_user(conn.id, conn.user_id)
        except Reject as r:
            self._forget(conn)
            ws.trio_rt_conn = None
            self._stats.rejected(f"http_{r.status}")
            return to_ws_response(HttpResponse.json(r.status, {"error": r.reason}, **r.headers))
        except Exception:
            log.exception("connection handler failed; answering 500")
            self._forget(conn)
            ws.trio_rt_conn = None
            self._stats.rejected("handler_error")
            return to_ws_response(HttpResponse.json(500, {"error": "internal server error"}))
        conn._accepted = True
        return None

    def _origin_allowed(self, request: WsRequest) -> bool:
        origins = request.headers.get_all("Origin")
        if not origins:
            return self.options.allow_missing_origin
        allowed = self.options.allowed_origins
        return len(origins) == 1 and allowed is not None and origins[0].lower() in allowed

    def _select_subprotocol(
        self, ws: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        # The client's first offer that we support; never fail the handshake over it (a
        # `bearer.<token>` entry is read by the auth handler, never echoed back).
        supported = self.options.subprotocols
        for proto in offered:
            if proto in supported:
                return proto
        return None

    async def _http(self, request: WsRequest) -> Response:
        path = request.path.split("?", 1)[0]
        handler = self._routes.get(path)
        if handler is None:
            return to_ws_response(HttpResponse.json(404, {"error": "not found", "path": path}))
        try:
            result = handler(request)
            if inspect.isawaitable(result):
                result = await result
            assert isinstance(result, HttpResponse)
            return to_ws_response(result)
        except Exception:
            log.exception("HTTP handler for %s failed", path)
            return to_ws_response(HttpResponse.json(500, {"error": "internal server error"}))

    def _health(self, request: WsRequest) -> HttpResponse:
        status = 503 if self._closing else 200
        return HttpResponse.json(
            status,
            {
                "status": "shutting_down" if self._closing else "ok",
                "server_id": self.server_id,
                "connections": len(self._connections),
                "rooms": len(self._rooms.rooms),
                "uptime_s": round(time.time() - self._stats.started_at, 3),
            },
        )

    async def _ws_handler(self, ws: ServerConnection) -> None:
        assert isinstance(ws, _ServerConnection) and ws.trio_rt_conn is not None
        conn = ws.trio_rt_conn
        self._stats.connections_opened += 1
        try:
            welcome = self._welcome(conn)
            if welcome is not None:
                conn._outbox.push_front(OutboundMessage(encode(welcome)))
            self._schedule_expiry(conn)
            await conn._run()
        finally:
            with trio.CancelScope(shield=True):
                await self._finish(conn)
            ws.trio_rt_conn = None  # no cycle ws <-> conn: refcounting frees both (GC work)

    def _default_welcome(self, conn: Connection) -> dict[str, Any]:
        return {
            "type": "welcome",
            "connection_id": conn.id,
            "user_id": conn.user_id,
            "server_id": self.server_id,
            "heartbeat_interval": self.options.heartbeat_interval,
        }

    def _forget(self, conn: Connection) -> bool:
        """Unregister `conn` and its memberships (sync, idempotent). True the first time."""
        self._expiry_timers.cancel(conn.id)
        if self._connections.pop(conn.id, None) is None:
            return False
        self._admission.forget(conn.id)
        self._caps.release(conn.id)
        for room, result in self._rooms.leave_all(conn):
            if result.last_member:
                self._room_emptied(room)
            elif self.history is not None:
                self._order.left(room, conn.id)
        conn._outbox.close()
        return True

    async def _finish(self, conn: Connection) -> None:
        """The end of a connection (opened or not): cleanup, then the disconnect handlers."""
        if not self._forget(conn):
            return
        conn._is_closed = True
        self._stats.connections_closed += 1
        if conn._accepted:
            code = conn._final_close_code()
            for handler in self._disconnect_handlers:
                with trio.move_on_after(self.options.close_timeout) as scope:
                    try:
                        await handler(conn, code)
                    except Exception:
                        log.exception("disconnect handler failed for %r", conn)
                if scope.cancelled_caught:
                    log.error("disconnect handler timed out for %r", conn)

    # -- messages from clients ------------------------------------------------------------------
    async def _dispatch(self, conn: Connection, frame: str | bytes) -> None:
        self._stats.messages_in += 1
        request_id: str | int | None = None
        try:
            command = parse(frame)
        except ProtocolError as exc:
            # Invalid frames count against the default budget too: garbage is not free.
            if await self._admission.admit(conn, None, exc.request_id):
                self._stats.protocol_errors += 1
                await conn.send(error_message(exc.code, exc.message, request_id=exc.request_id))
            return
        request_id = command.request_id
        if not await self._admission.admit(conn, _type_of(command), request_id):
            return
        try:
            if isinstance(command, ClientMessage):
                handler = self._message_handlers.get(command.type, self._fallback_handler)
                if handler is None:
                    raise ProtocolError(
                        ErrorCode.UNKNOWN_TYPE,
                        f"unknown message type {command.type!r}",
                        request_id=request_id,
                    )
                path = self._room_fields.get(command.type)
                if path is not None:
                    await self._check_broadcast(conn, command.data, path, request_id)
                instruments = self._instruments
                if instruments is None:
                    await handler(conn, command.data)
                else:
                    started = time.perf_counter()
                    try:
                        await handler(conn, command.data)
                    finally:
                        # Label by registered type: clients cannot invent label values.
                        label = command.type if command.type in self._message_handlers else "*"
                        instruments.handler_finished(label, time.perf_counter() - started)
            elif isinstance(command, JoinRoom):
                room = self._rooms.get(command.room)
                # A refusal is exactly the answer for a room that does not exist: reveal nothing.
                if (
                    room is not None
                    and room.private
                    and not await self._room_allowed(conn, room, "join")
                ):
                    raise RoomError(ErrorCode.NOT_PERMITTED, f"cannot join room {room.name!r}")
                await self._join_command(conn, command)
            elif isinstance(command, LeaveRoom):
                await self.leave_room(conn, command.room)
                await conn.send(_reply("room_left", request_id, room=command.room))
            elif isinstance(command, Ping):
                await conn.send(_reply("pong", request_id))
            elif isinstance(command, History):
                await self._history_command(conn, command)
            elif isinstance(command, Subscribe | Unsubscribe):
                builtin = self._builtins.get(type(command))
                if builtin is None:
                    raise ProtocolError(
                        ErrorCode.UNKNOWN_TYPE,
                        "table subscriptions are not enabled on this server",
                        request_id=request_id,
                    )
                await builtin(conn, command)
            elif isinstance(command, Refresh):
                expires_at = await self._refresh(conn, command.token)
                await conn.send(_reply("refreshed", request_id, expires_at=expires_at))
            elif isinstance(command, Kick):
                if not self._rooms.is_moderator(
                    command.room, conn.user_id
                ) and not await self.authorize(conn, f"room:{command.room}", "moderate"):
                    raise RoomError(
                        ErrorCode.NOT_PERMITTED,
                        f"only a moderator of room {command.room!r} can kick",
                    )
                await self.kick(command.room, command.user_id, by=conn.user_id)
                await conn.send(
                    _reply("kicked", request_id, room=command.room, user_id=command.user_id)
                )
        except ProtocolError as exc:  # RoomError too: the same family
            self._stats.protocol_errors += 1
            await conn.send(
                error_message(exc.code, exc.message, request_id=exc.request_id or request_id)
            )
        except Exception as exc:
            self._stats.handler_errors += 1
            log.exception("message handler failed for %r", conn)
            for on_error in self._error_handlers:
                try:
                    await on_error(conn, exc)
                except Exception:
                    log.exception("error handler failed")
            await conn.send(
                error_message(
                    ErrorCode.INTERNAL_ERROR,
                    "internal server error while handling the message",
                    request_id=request_id,
                )
            )

    async def _join_command(self, conn: Connection, command: JoinRoom) -> None:
        room, request_id, history = command.room, command.request_id, self.history
        if history is None or not history.enabled(room):
            await self.join_room(conn, room)
            await conn.send(_reply("room_joined", request_id, room=room))
            return
        if command.since is None:
            await self.join_room(conn, room)
            position = await history.current(room)
            self._order.member(room, conn.id, position, reach_back=False)
            await conn.send(
                _reply("room_joined", request_id, room=room, position=position.to_json())
            )
            return
        # Recovery: what the room's order lets go for this member waits in a gate while the
        # missed ones are read; then both go out merged by offset, each once, in order
        # (RoomOrdering.recover_from, ReplayGate).
        since = command.since
        token: object | None = None
        result: Recovery | None = None
        try:
            _, token = await self._join(conn, room, since)
            try:
                result = await history.recover(room, since)
            except Exception:
                log.exception("recovery of room %r failed; the client will refetch", room)
                result = Recovery([], since, "unavailable")
        finally:
            # No await from here on: what the gate lets go is sent, then the reply.
            out, at = self._order.recovered(room, conn.id, token, result)
            for env in out:
                conn.send_encoded(OutboundMessage(env.payload))
        assert result is not None
        recovered, reason = result.recovered, result.reason
        if recovered and at is None and token is not None and room in self._rooms.rooms_of(conn):
            # A new epoch began while the replay read the store: the gate ended, what it
            # held went out; positions of the old epoch mean nothing now.
            recovered, reason = False, "epoch_changed"
        reply = _reply(
            "room_joined",
            request_id,
            room=room,
            position=(at if at is not None else result.position).to_json(),
            recovered=recovered,
        )
        if reason is not None:
            reply["reason"] = reason
        await conn.send(reply)

    async def _history_command(self, conn: Connection, command: History) -> None:
        history = self.history
        if history is None or not history.enabled(command.room):
            raise RoomError(ErrorCode.NOT_PERMITTED, f"room {command.room!r} keeps no history")
        if command.room not in self._rooms.rooms_of(conn):
            raise RoomError(
                ErrorCode.NOT_IN_ROOM, f"join room {command.room!r} to read its history"
            )
        entries, current = await history.page(
            command.room, command.limit, command.before, command.after
        )
        # The stored messages are JSON already: splice them in rather than parse and re-encode.
        head = _reply("history", command.request_id, room=command.room)
        head["position"] = current.to_json()
        opening = encode(head)[:-1] + b',"messages":['
        body = b",".join(e.payload.encode("utf-8") for e in entries)
        conn.send_encoded(OutboundMessage(opening + body + b"]}"))
        await trio.lowlevel.checkpoint()

    # -- security -------------------------------------------------------------------------------
    async def authorize(self, conn: Connection, resource: str, action: str) -> bool:
        """May `conn` do `action` on `resource` (``room:<name>``, ``table:<name>``)?

        With a `permissions` store: its answer for ``conn.user_id`` (None when anonymous). A
        store that raises is logged and answered False (fail closed). Without a store: True for
        the actions of an open server (`join`, `read`, `broadcast`), False for anything else
        (`moderate`). Private rooms are checked by the manager on top of this (see
        docs/security.md). Never raises for a refusal.
        """
        store = self.permissions
        if store is None:
            await trio.lowlevel.checkpoint()
            return action in OPEN_ACTIONS
        try:
            return bool(await store.has_permission(conn.user_id, resource, action))
        except Exception:
            log.exception("permission store failed for %r %s %s; refusing", conn, resource, action)
            return False

    async def _room_allowed(self, conn: Connection, room: Room[Connection], action: str) -> bool:
        """Public rooms: `authorize`. Private rooms: a listed moderator, or an explicit grant
        from the store (no store: nobody else)."""
        if not room.private:
            return await self.authorize(conn, f"room:{room.name}", action)
        if conn.user_id is not None and conn.user_id in room.moderators:
            await trio.lowlevel.checkpoint()
            return True
        if self.permissions is None:
            await trio.lowlevel.checkpoint()
            return False
        return await self.authorize(conn, f"room:{room.name}", action)

    async def _check_broadcast(
        self,
        conn: Connection,
        data: dict[str, Any],
        path: tuple[str, ...],
        request_id: str | int | None,
    ) -> None:
        value: Any = data
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        field_name = ".".join(path)
        if not isinstance(value, str):
            raise ProtocolError(
                ErrorCode.INVALID_FIELD,
                f"'{field_name}' must be a room name",
                request_id=request_id,
            )
        name = validate_room_name(value, request_id=request_id)
        room = self._rooms.get(name)
        allowed = (
            await self._room_allowed(conn, room, "broadcast")
            if room is not None
            else await self.authorize(conn, f"room:{name}", "broadcast")
        )
        if not allowed:
            raise RoomError(ErrorCode.NOT_PERMITTED, f"cannot broadcast to room {name!r}")

    async def _refresh(self, conn: Connection, token: str) -> float | None:
        auth = self._auth
        if auth is None:
            raise ProtocolError(
                ErrorCode.NOT_PERMITTED, "token refresh is not enabled on this server"
            )
        from ._auth import AuthError

        try:
            claims = await auth.verify(token)
        except AuthError as e:
            raise ProtocolError(ErrorCode.NOT_PERMITTED, f"refresh refused: {e.reason}") from None
        if claims.user_id != conn.user_id:
            raise ProtocolError(
                ErrorCode.NOT_PERMITTED, "refresh refused: the token is for another user"
            )
        conn.state["claims"] = claims
        conn.expires_at = auth.deadline(claims)
        self._schedule_expiry(conn)
        await trio.lowlevel.checkpoint()
        return claims.expires_at

    def _schedule_expiry(self, conn: Connection) -> None:
        expires_at = conn.expires_at
        if expires_at is None:
            self._expiry_timers.cancel(conn.id)
            return
        self._expiry_timers.set(conn.id, trio.current_time() + (expires_at - time.time()))

    def _token_expired(self, conn_id: str) -> None:
        """The server's one expiry timer fired for a connection (its latest token's expiry: a
        refresh replaced the deadline): close it with 4004."""
        conn = self._connections.get(conn_id)
        if conn is not None and conn.expires_at is not None:
            self._stats.tokens_expired += 1
            conn._close_soon(CloseCode.TOKEN_EXPIRED, "token expired")

    # -- rooms ----------------------------------------------------------------------------------
    async def create_room(
        self,
        name: str,
        *,
        max_users: int | None = None,
        persistent: bool = False,
        moderators: Iterable[str] = (),
        private: bool = False,
    ) -> Room[Connection]:
        """Create a room, or update an existing room's settings. Raises ValueError on bad input.

        Non-persistent rooms disappear when their last member leaves; persistent ones stay.
        With a `room_store`, a persistent room's settings are saved first (so a store error
        raises and changes nothing) and it exists again after a restart.
        A `private` room is joined by clients only with a ``join`` grant on ``room:<name>``
        from the permission store, or as one of its `moderators`; a refusal reads exactly like
        the answer for a room that does not exist. `join_room` called by the app is not checked.
        Private rooms stay when empty (as if persistent) until `delete_room`: otherwise the next
        join would re-create the room as a public one.
        """
        existing = self._rooms.get(name)
        if self.room_store is not None:
            validate_room_name(name)
            if persistent:
                from ._room_store import RoomSettings

                moderators = frozenset(moderators)
                await self.room_store.save(RoomSettings(name, max_users, moderators, private))
            elif existing is not None and existing.persistent:
                await self.room_store.delete(name)
        room = self._rooms.create(
            name, max_users=max_users, persistent=persistent, moderators=moderators, private=private
        )
        await trio.lowlevel.checkpoint()
        return room

    async def delete_room(self, name: str) -> None:
        """Remove a room; its local members get ``room_left`` (reason ``deleted``).

        A persistent room is removed from the `room_store` too (first: a store error raises
        and changes nothing)."""
        existing = self._rooms.get(name)
        if self.room_store is not None and existing is not None and existing.persistent:
            await self.room_store.delete(name)
        members = self._rooms.delete(name)
        if members:
            self._room_emptied(name)
        msg = OutboundMessage(encode({"type": "room_left", "room": name, "reason": "deleted"}))
        cork = self._flushes.begin()
        for conn in members:
            conn.send_encoded(msg, cork)
        await trio.lowlevel.checkpoint()

    async def join_room(self, conn: Connection, room: str) -> bool:
        """Add `conn` to `room` (created on first join when auto_create_rooms is on).

        Idempotent: returns False when already a member. Raises RoomError (code room_full or
        not_permitted) and ProtocolError for an invalid name. Returns once broadcasts to the
        room reach this connection, on every server. A closed connection joins nothing.
        """
        joined, _ = await self._join(conn, room)
        return joined

    async def _join(
        self, conn: Connection, room: str, since: StreamPosition | None = None
    ) -> tuple[bool, object | None]:
        """`join_room`; with `since` (a room with history), the member recovers from it: it
        is put behind a gate before the first await (RoomOrdering.recover_from). Returns
        whether it joined, and the recovery's token (None: no gate)."""
        validate_room_name(room)
        if conn.id not in self._connections:
            await trio.lowlevel.checkpoint()
            return False, None
        cap = self.options.max_rooms_per_connection
        if cap is not None and self._rooms.room_count(conn) >= cap:
            current = self._rooms.get(room)
            if current is None or conn not in current.members:
                raise RoomError(
                    ErrorCode.LIMIT_EXCEEDED, f"a connection can be in at most {cap} rooms"
                )
        result = self._rooms.join(conn, room)
        channel = self._room_channel(room)
        history = self.history
        ordered = history is not None and history.enabled(room)
        token: object | None = None
        if ordered:
            self._order.open(room)  # what arrives before its start waits for it
            if since is not None:
                token = self._order.recover_from(room, conn.id, since)
        if result.first_member:
            done = self._pending_subscriptions[channel] = trio.Event()
            try:
                await self.broker.subscribe(channel)
            except BaseException:
                if self._rooms.leave(conn, room).last_member:
                    self._room_emptied(room)
                elif ordered:
                    self._order.left(room, conn.id)
                raise
            finally:
                done.set()
                if self._pending_subscriptions.get(channel) is done:
                    del self._pending_subscriptions[channel]
        else:
            pending = self._pending_subscriptions.get(channel)
            if pending is not None:
                await pending.wait()
            else:
                await trio.lowlevel.checkpoint()
        if ordered and not self._order.started(room) and self._order.has(room):
            # The room's order starts where its first local member joined: offsets at or
            # below are the past (subscribed first, so everything after it arrives).
            assert history is not None
            try:
                position = await history.current(room)
            except Exception:
                log.warning(
                    "could not read the position of room %r; its order starts at its first message",
                    room,
                    exc_info=True,
                )
            else:
                self._order.start(room, position)
        return result.joined, token

    async def leave_room(self, conn: Connection, room: str) -> bool:
        """Remove `conn` from `room`. Idempotent: returns False when it was not a member."""
        result = self._rooms.leave(conn, room)
        if result.last_member:
            self._room_emptied(room)
        elif result.left and self.history is not None:
            self._order.left(room, conn.id)
        await trio.lowlevel.checkpoint()
        return result.left

    async def kick(
        self, room: str, user_id: str, *, by: str | None = None, reason: str = ""
    ) -> None:
        """Remove every connection of `user_id` from `room`, on every server.

        Each gets ``{"type": "room_kicked", "room", "by", "reason"}``; it stays connected.
        """
        payload = encode({"type": "room_kicked", "room": room, "by": by, "reason": reason})
        env = Envelope(payload, rooms=(room,), kind=KIND_KICK, user_id=user_id)
        await self.broker.publish(self._room_channel(room), encode_envelope(env))

    def rooms_of(self, conn: Connection) -> frozenset[str]:
        return self._rooms.rooms_of(conn)

    def members_of(self, room: str) -> frozenset[Connection]:
        """This server's members of `room`."""
        return self._rooms.members_of(room)

    def get_room(self, name: str) -> Room[Connection] | None:
        return self._rooms.get(name)

    @property
    def rooms(self) -> Mapping[str, Room[Connection]]:
        return self._rooms.rooms

    @property
    def connections(self) -> Mapping[str, Connection]:
        """Connections of this server by id, including those still in their handshake."""
        return self._connections

    @property
    def stats(self) -> ServerStats:
        return self._stats

    # -- broadcast ------------------------------------------------------------------------------
    async def broadcast(self, data: dict[str, Any], *, exclude: Connection | None = None) -> None:
        """Send `data` to every client on every server (except `exclude`)."""
        await self._publish(None, data, exclude)

    async def broadcast_to_room(
        self, room: str, data: dict[str, Any], *, exclude: Connection | None = None
    ) -> StreamPosition | None:
        """Send `data` to every member of `room`, on every server (except `exclude`).

        In a room with history (`RoomHistory`), the message gets ``room`` and ``position``
        fields and is stored before it is published; the position is returned once the
        broker has handed it on. Raises what the sequencer or the store raises, and then
        nothing was sent. Raises `BrokerUnavailable` when the broker could not hand it on:
        then the message WAS stored (this server's members got it, and it may reach the
        others through history, recovery or a heal: "refused but stored"), but the caller
        should treat it as refused. Without history it raises `BrokerUnavailable` likewise.
        """
        history = self.history
        if history is None or not history.enabled(room):
            await self._publish((room,), data, exclude)
            return None
        position, payload = await history.record(room, data)
        self._stats.broadcasts += 1
        env = Envelope(
            payload,
            rooms=(room,),
            exclude=exclude.id if exclude is not None else None,
            offset=position.offset,
            epoch=position.epoch,
        )
        await self.broker.publish(self._room_channel(room), encode_envelope(env))
        return position

    async def broadcast_to_rooms(
        self, rooms: Iterable[str], data: dict[str, Any], *, exclude: Connection | None = None
    ) -> None:
        """Send `data` to the members of several rooms; a member of several gets it once."""
        if isinstance(rooms, str):
            raise TypeError("rooms must be an iterable of room names, not a string")
        await self._publish(unique_rooms(rooms), data, exclude)

    async def _publish(
        self, rooms: tuple[str, ...] | None, data: dict[str, Any], exclude: Connection | None
    ) -> None:
        payload = encode(data)  # serialize once, whatever the number of recipients
        self._stats.broadcasts += 1
        env = encode_envelope(
            Envelope(payload, rooms=rooms, exclude=exclude.id if exclude is not None else None)
        )
        if rooms is None:
            await self.broker.publish(self._all_channel, env)
            return
        if not rooms:
            await trio.lowlevel.checkpoint()
        for room in rooms:
            await self.broker.publish(self._room_channel(room), env)

    def _room_channel(self, room: str) -> str:
        return self._room_prefix + room

    def _room_emptied(self, room: str) -> None:
        """No local member is left: stop receiving the room and forget its reorder state."""
        self.broker.unsubscribe(self._room_channel(room))
        self._order.drop(room)

    def _on_broker_message(self, channel: str, data: bytes) -> None:
        """Deliver what the broker hands us to local clients. Sync: it never waits on a client."""
        component = self._channel_handlers.get(channel)
        if component is not None:
            component(data)
            return
        try:
            env = decode_envelope(data)
        except ValueError:
            log.warning("ignoring a message on %s that is not a trio_rt envelope", channel)
            return
        if channel == self._servers_channel:
            self._queue_server_message(env)
            return
        instruments = self._instruments
        started = time.perf_counter() if instruments is not None else 0.0
        if channel == self._all_channel:
            targets: Iterable[Connection] = list(self._connections.values())
        elif channel.startswith(self._room_prefix):
            room = channel[len(self._room_prefix) :]
            if env.kind == KIND_KICK:
                self._apply_kick(room, env)
                return
            if env.offset is not None:  # a room with history: delivered in offset order
                self._feed_positioned(room, env)
                return
            targets = recipients(env, room, self._rooms.members_of, self._rooms.rooms_of)
        else:
            return
        message = OutboundMessage(env.payload)
        exclude = env.exclude
        cork = self._flushes.begin()  # one decision for every recipient
        n = 0
        for conn in targets:
            if conn.id != exclude:
                conn.send_encoded(message, cork)
                n += 1
        self._stats.deliveries += n
        if instruments is not None:
            instruments.fanned_out(n, time.perf_counter() - started)

    # -- rooms with history: offset order ----------------------------------------------------------
    def _feed_positioned(self, room: str, env: Envelope) -> None:
        """A room message with a position, from the broker: in offset order, each once, through
        the room's ReorderBuffer (opened when its first local member joins)."""
        history = self.history
        if history is None:  # another server keeps history; this one has no window: as is
            self._fan_out_positioned(room, [env])
            return
        if not self._order.has(room):
            existing = self._rooms.get(room)
            if existing is None or not existing.members:
                return  # in flight after the last member left: nobody to deliver to
        self._order.feed(room, env)

    def _fan_out_positioned(self, room: str, envs: list[Envelope]) -> None:
        """Deliver room messages with positions, in the given order. Members recovering the
        room get them through their gate (`_join_command`, RoomOrdering.gate_live); a member
        gets no offset at or below the position it joined at, nor one its recovery already
        sent from the store."""
        instruments = self._instruments
        cork = self._flushes.begin()  # one decision for every recipient
        order = self._order
        replayed = order.replayed.get(room)
        gates = order.gates.get(room)
        for env in envs:
            started = time.perf_counter() if instruments is not None else 0.0
            offset = env.offset
            assert offset is not None
            floors = order.floor_filter(room, env.epoch, offset)
            message = OutboundMessage(env.payload)
            n = 0
            for conn in recipients(env, room, self._rooms.members_of, self._rooms.rooms_of):
                if conn.id == env.exclude:
                    continue
                if floors is not None:
                    floor = floors.get(conn.id)
                    if floor is not None and offset <= floor:
                        continue
                if replayed:
                    seen = replayed.get(conn.id)
                    if seen is not None and offset in seen:
                        seen.discard(offset)
                        continue
                if gates and conn.id in gates:
                    for out in order.gate_live(room, conn.id, env):
                        conn.send_encoded(
                            message if out is env else OutboundMessage(out.payload), cork
                        )
                else:
                    conn.send_encoded(message, cork)
                n += 1
            self._stats.deliveries += n
            if instruments is not None:
                instruments.fanned_out(n, time.perf_counter() - started)

    def _send_to_member(self, room: str, conn_id: str, envs: list[Envelope]) -> None:
        """Room messages a member's recovery gate let go (RoomOrdering), in order."""
        conn = self._connections.get(conn_id)
        if conn is None or room not in self._rooms.rooms_of(conn):
            return
        cork = self._flushes.begin()
        for env in envs:
            conn.send_encoded(OutboundMessage(env.payload), cork)
        self._stats.deliveries += len(envs)

    def _room_gap(
        self,
        room: str,
        epoch: str,
        first: int,
        last: int | None,
        reason: str,
        member: str | None = None,
    ) -> None:
        """Tell `room`'s local members (or only `member`, a connection id) that offsets
        first..last (last None: up to the newest) may not have reached them
        (docs/protocol.md, ``room_gap``)."""
        message: dict[str, Any] = {
            "type": "room_gap",
            "room": room,
            "after": StreamPosition(first - 1, epoch).to_json(),
        }
        if last is not None:
            message["before"] = StreamPosition(last + 1, epoch).to_json()
        message["reason"] = reason
        log.warning(
            "room %r: offsets %d..%s of epoch %s skipped unread (%s); members told",
            room,
            first,
            "" if last is None else last,
            epoch,
            reason,
        )
        outbound = OutboundMessage(encode(message))
        floors = self._order.floors.get(room) or {}
        for conn in self._rooms.members_of(room):
            if member is not None and conn.id != member:
                continue
            floor = floors.get(conn.id)
            if last is not None and floor is not None and last <= floor:
                continue  # the whole range is from before it joined
            conn.send_encoded(outbound)

    def _queue_server_message(self, env: Envelope) -> None:
        if env.kind != KIND_SERVER or env.origin == self.server_id or self._server_inbox is None:
            return
        try:
            message = json.loads(env.payload)
        except ValueError:
            log.warning("ignoring a cross-server message that is not JSON")
            return
        try:
            self._server_inbox.send_nowait((message, env.origin or ""))
        except trio.WouldBlock:
            log.error("cross-server message dropped: %d are already waiting", SERVER_INBOX_SIZE)

    async def _run_server_message_handlers(
        self, receive: trio.MemoryReceiveChannel[tuple[dict[str, Any], str]]
    ) -> None:
        async with receive:
            async for message, origin in receive:
                for handler in self._server_message_handlers:
                    try:
                        await handler(message, origin)
                    except Exception:
                        log.exception("cross-server message handler failed")

    def _apply_kick(self, room: str, env: Envelope) -> None:
        message = OutboundMessage(env.payload)
        for conn in self._rooms.members_of(room):
            if conn.user_id is not None and conn.user_id == env.user_id:
                result = self._rooms.leave(conn, room)
                if result.last_member:
                    self._room_emptied(room)
                elif self.history is not None:
                    self._order.left(room, conn.id)
                conn.send_encoded(message)


def _type_of(command: Command) -> str:
    return command.type if isinstance(command, ClientMessage) else command.TYPE


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


def _reply(type: str, request_id: str | int | None, **fields: Any) -> dict[str, Any]:
    return reply(type, request_id, **fields)  # the one reply helper is _protocol.reply


def _check_coroutine(fn: F) -> F:
    if not inspect.iscoroutinefunction(fn) and not inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - async callable objects are fine too
    ):
        raise TypeError(f"{fn!r} must be an async function (async def)")
    return fn

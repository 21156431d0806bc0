"""WebSocketManager: the server. It keeps the options, the lifecycle (serve, stop, graceful
shutdown, the nursery tree) and the public API; the work is done by its parts, each with only
the narrow interface it needs (docs/architecture.md, "Who owns what"):

- `HandshakeAdmission` (`_engine/handshake.py`): origin, shutdown, caps, the connection handlers,
  the subprotocol; `HttpRoutes` (`_engine/http.py`): plain HTTP on the same port;
- `CommandDispatch` (`_engine/dispatch.py`): every client message to its handler, every failure to
  an ``error`` reply; `MessageAdmission` (`_engine/admission.py`): the rate limits;
- `Delivery` (`_engine/delivery.py`): broadcasts out, broker messages in (rooms in offset order
  through `RoomOrdering`, kicks, ``room_gap``, the cross-server inbox);
- `RoomService` (`_engine/room_service.py`): rooms, membership, authorization, the room commands;
- `TokenExpiry` (`_engine/tokens.py`): 4004 and ``refresh``; `HeartbeatDriver`
  (`_engine/heartbeat_driver.py`): pings and 4001;
- `Connection` (`_engine/connection.py`): one client, calling back through its `ConnectionHost`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

import trio
from websockets.http11 import Request as WsRequest
from websockets.trio.server import Server

from .._core.caps import ConnectionCaps
from .._core.heartbeat import Beat
from .._core.options import ServerOptions, ServerOptionsDict
from .._core.protocol import (
    BuiltinCommand,
    CloseCode,
    History,
    JoinRoom,
    Kick,
    LeaveRoom,
    Refresh,
    StreamPosition,
)
from .._core.ratelimit import RateLimiter
from .._core.rooms import Room, RoomRegistry
from .._core.stats import ChangeStreamStats, Instruments, ServerStats
from .._transport.reuseport import open_reuseport_listeners
from .._transport.ws_connection import start_websockets_server
from .admission import MessageAdmission
from .broker import Broker, MemoryBroker
from .connection import Connection
from .delivery import Channels, Delivery, ServerMessageHandler
from .dispatch import (
    CommandDispatch,
    CommandHandler,
    ErrorHandler,
    MessageHandler,
    check_coroutine,
)
from .flush import FlushQueue
from .gc_freeze import run_gc_freezer
from .handshake import ConnectionHandler, HandshakeAdmission
from .heartbeat_driver import HeartbeatDriver
from .http import HttpHandler, HttpResponse, HttpRoutes
from .lifecycle import ConnectionLifecycle, DisconnectHandler, EngineHost
from .permissions import PermissionStore
from .room_service import RoomService
from .static import CLIENT_JS_PATH, client_js_route
from .tokens import TokenExpiry

if TYPE_CHECKING:
    from .auth import JWTAuthenticator
    from .history import RoomHistory
    from .presence import PresenceService
    from .room_store import RoomStore

__all__ = ["ServerStats", "WebSocketManager"]

log = logging.getLogger("trio_rt")

Service = Callable[..., Awaitable[None]]  # async fn(*, task_status) run in the manager's nursery
C = TypeVar("C", bound=BuiltinCommand)
F = TypeVar("F", bound=Callable[..., Any])


class WebSocketManager:
    """A WebSocket server with rooms and broadcasts, run inside the caller's Trio nursery.

    Use either form::

        async with WebSocketManager(port=3001) as manager:    # serves inside the block
            ...
        # or
        host, port = await nursery.start(manager.serve)

    Options are the keywords of `ServerOptions` (checked by type checkers through
    `ServerOptionsDict`, validated all at once at construction), or one `ServerOptions`
    object as `options` (not both).

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

    Extensions (`ChangeStreamManager`, `WebSocketMetrics`) attach through public methods:
    `add_command`, `listen` / `stop_listening`, `begin_fan_out`, `add_service`, `route`,
    `attach_instruments`, `attach_change_streams`.
    """

    def __init__(
        self,
        options: ServerOptions | None = None,
        *,
        broker: Broker | None = None,
        welcome: Callable[[Connection], dict[str, Any] | None] | None = None,
        history: RoomHistory | None = None,
        room_store: RoomStore | None = None,
        auth: JWTAuthenticator | None = None,
        permissions: PermissionStore | None = None,
        rate_limiter: RateLimiter | None = None,
        **kwargs: Unpack[ServerOptionsDict],
    ) -> None:
        if options is None:
            options = ServerOptions.from_dict(kwargs)
        elif kwargs:
            raise TypeError("pass a ServerOptions object or option keywords, not both")
        elif not isinstance(options, ServerOptions):
            raise TypeError(f"options must be a ServerOptions, not {type(options).__name__}")
        self.options = o = options
        self.server_id: str = o.server_id or uuid.uuid4().hex[:12]
        if o.worker_id is not None:  # one name per worker process, even when the app set one
            self.server_id = f"{self.server_id}-w{o.worker_id}"
        self.broker: Broker = broker if broker is not None else MemoryBroker()
        self.history = history
        self.room_store = room_store
        self.permissions: PermissionStore | None = permissions
        self._stats = stats = ServerStats()
        self._services: list[Service] = list(history.services()) if history is not None else []
        self._service_nursery: trio.Nursery | None = None
        # Each running service's cancel scope and end, in start order (stopped in reverse).
        self._service_runs: list[tuple[trio.CancelScope, trio.Event]] = []
        self._instruments: Instruments | None = None
        self._change_streams: ChangeStreamStats | None = None
        self._presence: PresenceService | None = None
        self._running = False
        self._stop = trio.Event()
        self._address: tuple[str, int] | None = None
        # -- the parts, wired (the module docstring says who does what) --
        self._flushes = flushes = FlushQueue[Connection]()  # when sends are corked
        connections: dict[str, Connection] = {}
        registry = RoomRegistry[Connection](auto_create=o.auto_create_rooms)
        self._channels = Channels(o.channel_prefix)
        self._delivery = delivery = Delivery(
            self.server_id,
            self.broker,
            self._channels,
            registry,
            connections,
            flushes,
            stats,
            history,
        )
        self._rooms = rooms = RoomService(
            o, registry, connections, delivery, flushes, history, room_store, permissions
        )
        self._tokens = tokens = TokenExpiry(auth, connections, stats)
        self._admission = MessageAdmission(o, rate_limiter, stats)
        self._dispatch = dispatch = CommandDispatch(self._admission, stats, rooms.may_broadcast)
        dispatch.add_command(JoinRoom, rooms.join_command)
        dispatch.add_command(LeaveRoom, rooms.leave_command)
        dispatch.add_command(History, rooms.history_command)
        dispatch.add_command(Kick, rooms.kick_command)
        dispatch.add_command(Refresh, tokens.refresh_command)
        self._heartbeats: HeartbeatDriver[Connection] | None = None
        if o.heartbeat_interval is not None:
            assert o.heartbeat_timeout is not None
            self._heartbeats = HeartbeatDriver(o.heartbeat_interval, o.heartbeat_timeout)
        host = EngineHost(
            o, stats, flushes, dispatch.dispatch, self._heartbeat_add, registry.rooms_of
        )
        caps = ConnectionCaps(o.max_connections_per_ip, o.max_connections_per_user)
        self._connections = connections
        welcome = welcome if welcome is not None else self._default_welcome
        self._lifecycle = life = ConnectionLifecycle(
            host, connections, welcome, tokens, self._admission, caps, rooms
        )
        self._routes = HttpRoutes()
        self._routes.add("/health", self._health)
        if o.serve_client_js:
            # the browser client (_engine/static.py)
            self._routes.add(CLIENT_JS_PATH, client_js_route)
        self._handshake = HandshakeAdmission(
            o, stats, connections, caps, self._routes, life.new_connection, life.forget, life.finish
        )
        if auth is not None:
            self._handshake.handlers.append(auth)  # first: later handlers see the user

    # -- handler registration -----------------------------------------------------------------
    def on_connection(self, fn: ConnectionHandler) -> ConnectionHandler:
        """Register `async def handler(conn)`, run during the handshake, before the upgrade.

        `conn.request` has the path, query, headers and peer. Raise `Reject(status, reason)` to
        answer with an HTTP error instead of upgrading. Set `conn.user_id` / `conn.state` here,
        join rooms, queue messages (they follow the welcome).
        """
        self._handshake.handlers.append(check_coroutine(fn))
        return fn

    def on_disconnect(self, fn: DisconnectHandler) -> DisconnectHandler:
        """Register `async def handler(conn, close_code)`; runs once per accepted connection."""
        self._lifecycle.disconnect_handlers.append(check_coroutine(fn))
        return fn

    def on_error(self, fn: ErrorHandler) -> ErrorHandler:
        """Register `async def handler(conn, exc)` for exceptions raised by message handlers."""
        self._dispatch.error_handlers.append(check_coroutine(fn))
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
        return self._dispatch.on_message(type, room_field)

    def on(self, event: str, type: str | None = None) -> Callable[[F], F]:
        """Register a handler by event name, one decorator for every kind:
        ``@manager.on("connection" | "message" | "disconnect" | "error" |
        "cross_server_message")`` is `on_connection`, `on_message(type)` (None: all
        unhandled types), `on_disconnect`, `on_error`, `on_cross_server_message`."""

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
        other servers send with `send_to_servers`.

        Broadcasts to clients already reach every server by themselves; this is for the app's
        own coordination (cache invalidation, config reloads). Handlers run one at a time in
        a task of the manager; at most 1,000 messages wait for them, newer ones are dropped
        (and logged) beyond that.
        """
        self._delivery.server_handlers.append(check_coroutine(fn))
        return fn

    async def send_to_servers(self, data: dict[str, Any]) -> None:
        """Send `data` to the cross-server message handlers of every other server."""
        await self._delivery.send_to_servers(data)

    def route(self, path: str) -> Callable[[HttpHandler], HttpHandler]:
        """Serve plain HTTP GETs of `path` on the WebSocket port (health, metrics, files)."""
        if not path.startswith("/"):
            raise ValueError("route paths start with '/'")

        def register(fn: HttpHandler) -> HttpHandler:
            self._routes.add(path, fn)
            return fn

        return register

    def add_service(self, service: Service) -> None:
        """Run ``await service(task_status=...)`` in the manager's nursery while it serves.

        Services added before `serve` start before the listener opens (the server is ready
        once each has called ``task_status.started()``); added while serving, they start at
        once. They are stopped after the connections have closed, at the end of a graceful
        shutdown, one at a time in the reverse order they started, each awaited (at most
        `close_timeout`) before the next is cancelled: a service that owns a resource the
        services added after it use (a Cassandra session) outlives them, as in an exit stack.
        """
        if self._service_nursery is not None:
            self._service_nursery.start_soon(functools.partial(self._run_service, service))
        else:
            self._services.append(service)

    async def _run_service(
        self, service: Service, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
    ) -> None:
        scope, done = trio.CancelScope(), trio.Event()
        self._service_runs.append((scope, done))
        try:
            with scope:
                await service(task_status=task_status)
        finally:
            done.set()

    async def _stop_services(self) -> None:
        """Cancel the services in reverse start order, waiting for each (bounded)."""
        runs, self._service_runs = self._service_runs, []
        for scope, done in reversed(runs):
            scope.cancel()
            with trio.move_on_after(self.options.close_timeout):
                await done.wait()

    # -- seams for extensions -------------------------------------------------------------------
    def add_command(self, command: type[C], handler: CommandHandler[C]) -> None:
        """Handle the built-in command class `command` (e.g. `Subscribe`, from
        `trio_rt._core.protocol.BUILTIN_COMMANDS`) with ``async def handler(conn, command)``,
        replacing the handler it had. Raise `ProtocolError` in it for an ``error`` reply.
        ValueError for a class that is not a built-in command."""
        self._dispatch.add_command(command, handler)

    async def listen(self, channel: str, handler: Callable[[bytes], None]) -> None:
        """Subscribe the broker to `channel` and hand its raw messages to `handler` (sync,
        must not wait) instead of the manager's delivery. Returns once subscribed."""
        await self._delivery.listen(channel, handler)

    def stop_listening(self, channel: str) -> None:
        """Undo `listen` (idempotent)."""
        self._delivery.stop_listening(channel)

    def begin_fan_out(self) -> bool:
        """Call once before handing one message to many connections with
        ``conn.send_encoded(message, cork)``; pass the answer as `cork` to every one: True
        while a burst is under way (the frames are corked for one write per connection),
        False when the server is quiet (written at once)."""
        return self._flushes.begin()

    @property
    def instruments(self) -> Instruments | None:
        """The metrics object observing this manager (`attach_instruments`), or None."""
        return self._instruments

    def attach_instruments(self, instruments: Instruments) -> None:
        """Let `instruments` observe every app handler call and every broadcast delivered.
        RuntimeError if another is attached (a manager has one WebSocketMetrics)."""
        if self._instruments is not None and self._instruments is not instruments:
            raise RuntimeError("this manager already has a WebSocketMetrics")
        self._instruments = self._dispatch.instruments = self._delivery.instruments = instruments

    def detach_instruments(self, instruments: Instruments) -> None:
        """Undo `attach_instruments` (nothing if `instruments` is not the attached one)."""
        if self._instruments is instruments:
            self._instruments = self._dispatch.instruments = self._delivery.instruments = None

    def observe_membership(self, observer: Callable[[Connection, str, bool], None]) -> None:
        """Call ``observer(conn, room, joined)`` after every change of this server's room
        membership (join, leave, kick, a room deleted, a connection's end). Sync: it must not
        wait or raise. `PresenceService` follows the rooms through this."""
        self._rooms.registry.observers.append(observer)

    @property
    def presence(self) -> PresenceService | None:
        """The presence of this manager's rooms across servers (`PresenceService`), or None."""
        return self._presence

    def attach_presence(self, presence: PresenceService) -> None:
        """Record the `PresenceService` of this manager (it calls this when built)."""
        if self._presence is not None and self._presence is not presence:
            raise RuntimeError("this manager already has a PresenceService")
        self._presence = presence

    @property
    def change_streams(self) -> ChangeStreamStats | None:
        """The change streams serving this manager's clients (`attach_change_streams`)."""
        return self._change_streams

    def attach_change_streams(self, streams: ChangeStreamStats) -> None:
        """Record the change streams serving this manager's table subscriptions, for
        WebSocketMetrics (their lag and subscription count). The latest one counts."""
        self._change_streams = streams

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
                            await self._stop_services()
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
        limiter = self._admission.limiter
        with scope:
            async with contextlib.AsyncExitStack() as stack:
                # Optional capabilities of third-party brokers and limiters: looked up, not
                # required by their interfaces.
                if getattr(self.broker, "needs_asyncio", False) or getattr(
                    limiter, "needs_asyncio", False
                ):
                    # One trio-asyncio loop for every asyncio-based component of this server
                    # (imported here: the "redis" extra).
                    from ..redis._aio import ensure_loop

                    await stack.enter_async_context(ensure_loop())
                if hasattr(limiter, "aclose"):
                    stack.push_async_callback(self._close_rate_limiter)
                nursery = await stack.enter_async_context(trio.open_nursery())
                await self._delivery.start(nursery)  # the broker, its channels, the inbox
                nursery.start_soon(self._tokens.run)
                await nursery.start(self._flushes.run)
                await self._rooms.load()
                if self.history is not None:
                    self.history.check_deployment(self.broker)
                    nursery.start_soon(self._delivery.order.run)
                for service in self._services:
                    await nursery.start(self._run_service, service)
                self._service_nursery = nursery
                if self._heartbeats is not None:
                    await nursery.start(self._heartbeats.run)
                if o.gc_freeze_interval is not None:
                    nursery.start_soon(run_gc_freezer, o.gc_freeze_interval)
                if o.reuse_port:  # several worker processes on one port (_workers.py)
                    listeners = await open_reuseport_listeners(o.port, host=o.host)
                else:
                    listeners = await trio.open_tcp_listeners(o.port, host=o.host)
                sockname = listeners[0].socket.getsockname()
                self._address = (str(sockname[0]), int(sockname[1]))
                server = await start_websockets_server(
                    nursery, self._lifecycle.handle, listeners, o, self._handshake
                )
                log.info("trio_rt server %s listening on %s:%d", self.server_id, *self._address)
                task_status.started(server)

    async def _close_rate_limiter(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(self.options.close_timeout):
            await self._admission.limiter.aclose()  # type: ignore[attr-defined]

    def _heartbeat_add(self, conn: Connection) -> Beat[Connection] | None:
        return self._heartbeats.add(conn) if self._heartbeats is not None else None

    async def _shutdown(self, ws_server: Server) -> None:
        self._handshake.closing = True
        log.info("trio_rt server %s shutting down", self.server_id)
        with trio.move_on_after(self.options.shutdown_timeout):
            async with trio.open_nursery() as nursery:
                # Stops the listener, answers handshakes in progress with 503, waits for handlers.
                nursery.start_soon(functools.partial(ws_server.aclose, close_connections=False))
                for conn in list(self._connections.values()):
                    nursery.start_soon(conn.close, CloseCode.GOING_AWAY, "server shutting down")

    def _health(self, request: WsRequest) -> HttpResponse:
        closing = self._handshake.closing
        return HttpResponse.json(
            503 if closing else 200,
            {
                "status": "shutting_down" if closing else "ok",
                "server_id": self.server_id,
                "worker": self.options.worker_id,
                "connections": len(self._connections),
                "rooms": len(self._rooms.registry.rooms),
                "uptime_s": round(time.time() - self._stats.started_at, 3),
            },
        )

    def _default_welcome(self, conn: Connection) -> dict[str, Any]:
        return {
            "type": "welcome",
            "connection_id": conn.id,
            "user_id": conn.user_id,
            "server_id": self.server_id,
            "heartbeat_interval": self.options.heartbeat_interval,
        }

    # -- security -------------------------------------------------------------------------------
    async def authorize(self, conn: Connection, resource: str, action: str) -> bool:
        """May `conn` do `action` on `resource` (``room:<name>``, ``table:<name>``)?

        With a `permissions` store: its answer for ``conn.user_id`` (None when anonymous). A
        store that raises is logged and answered False (fail closed). Without a store: True for
        the actions of an open server (`join`, `read`, `broadcast`), False for anything else
        (`moderate`). Private rooms are checked by the manager on top of this (see
        docs/security.md). Never raises for a refusal.
        """
        return await self._rooms.authorize(conn, resource, action)

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
        return await self._rooms.create_room(
            name, max_users=max_users, persistent=persistent, moderators=moderators, private=private
        )

    async def delete_room(self, name: str) -> None:
        """Remove a room; its local members get ``room_left`` (reason ``deleted``).

        A persistent room is removed from the `room_store` too (first: a store error raises
        and changes nothing)."""
        await self._rooms.delete_room(name)

    async def join_room(self, conn: Connection, room: str) -> bool:
        """Add `conn` to `room` (created on first join when auto_create_rooms is on).

        Idempotent: returns False when already a member. Raises RoomError (code room_full or
        not_permitted) and ProtocolError for an invalid name. Returns once broadcasts to the
        room reach this connection, on every server. A closed connection joins nothing.
        """
        joined, _ = await self._rooms.join(conn, room)
        return joined

    async def leave_room(self, conn: Connection, room: str) -> bool:
        """Remove `conn` from `room`. Idempotent: returns False when it was not a member."""
        return await self._rooms.leave_room(conn, room)

    async def kick(
        self, room: str, user_id: str, *, by: str | None = None, reason: str = ""
    ) -> None:
        """Remove every connection of `user_id` from `room`, on every server.

        Each gets ``{"type": "room_kicked", "room", "by", "reason"}``; it stays connected.
        """
        await self._rooms.kick(room, user_id, by=by, reason=reason)

    def rooms_of(self, conn: Connection) -> frozenset[str]:
        return self._rooms.registry.rooms_of(conn)

    def members_of(self, room: str) -> frozenset[Connection]:
        """This server's members of `room`."""
        return self._rooms.registry.members_of(room)

    def get_room(self, name: str) -> Room[Connection] | None:
        return self._rooms.registry.get(name)

    @property
    def rooms(self) -> Mapping[str, Room[Connection]]:
        return self._rooms.registry.rooms

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
        await self._delivery.publish(None, data, exclude)

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
        return await self._delivery.publish_to_room(room, data, exclude)

    async def broadcast_to_rooms(
        self, rooms: Iterable[str], data: dict[str, Any], *, exclude: Connection | None = None
    ) -> None:
        """Send `data` to the members of several rooms; a member of several gets it once."""
        await self._delivery.publish_to_rooms(rooms, data, exclude)

"""ConnectionLifecycle: every connection of one server, from its registration to its end.

The handshake part registers a connection in `connections` (during the handshake, so caps
and `WebSocketManager.connections` see it); once websockets has upgraded it, `handle` serves
it: the welcome first, its token's expiry scheduled, then `Connection.run` until it ends.
However it ends (closed, reset, timed out, slow consumer, shutdown, or a handshake that never
completed) `finish` runs once: `forget` unregisters it everywhere (token timer, rate-limit
refusals, caps, every room: broker channels nobody local needs are unsubscribed), then, for a
connection the connection handlers accepted, the disconnect handlers, each bounded by
`close_timeout`. tests/engine/test_lifecycle.py checks that nothing is left behind.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import trio
from websockets.trio.server import ServerConnection

from .._core.caps import ConnectionCaps
from .._core.heartbeat import Beat
from .._core.options import ServerOptions
from .._core.outbox import OutboundMessage
from .._core.protocol import CloseCode, encode
from .._core.stats import ServerStats
from .admission import MessageAdmission
from .connection import Connection
from .flush import FlushQueue
from .room_service import RoomService
from .sockets import HostedSocket
from .tokens import TokenExpiry

__all__ = ["ConnectionLifecycle", "DisconnectHandler", "EngineHost"]

log = logging.getLogger("trio_rt")

DisconnectHandler = Callable[[Connection, int], Awaitable[None]]
Welcome = Callable[[Connection], dict[str, Any] | None]


@dataclass(frozen=True, slots=True)
class EngineHost:
    """The `ConnectionHost` every connection of one server calls back."""

    options: ServerOptions
    stats: ServerStats
    flushes: FlushQueue[Connection]
    dispatch: Callable[[Connection, str | bytes], Awaitable[None]]
    heartbeat_add: Callable[[Connection], Beat[Connection] | None]
    rooms_of: Callable[[Connection], frozenset[str]]


class ConnectionLifecycle:
    """Registration, serving and the end of connections (see the module docstring).

    `connections` is the server's registry (id -> connection), shared with the parts that
    read it; `welcome(conn)` is the first message of an opened connection (None: no welcome).
    """

    def __init__(
        self,
        host: EngineHost,
        connections: dict[str, Connection],
        welcome: Welcome,
        tokens: TokenExpiry,
        admission: MessageAdmission,
        caps: ConnectionCaps,
        rooms: RoomService,
    ) -> None:
        self.host = host
        self.connections = connections
        self.disconnect_handlers: list[DisconnectHandler] = []
        self._welcome = welcome
        self._tokens = tokens
        self._admission = admission
        self._caps = caps
        self._rooms = rooms

    def new_connection(self, ws: ServerConnection) -> Connection:
        return Connection(self.host, ws)

    def handle(self, ws: ServerConnection) -> Awaitable[None]:
        """websockets' connection handler: serve an upgraded connection until it ends.

        Not a coroutine function: it returns `conn.run`'s coroutine, which websockets awaits,
        so an idle connection keeps no frame of this (docs/performance.md); `run` calls
        `ended` last, shielded, however it ends."""
        hosted = cast(HostedSocket, ws)  # the transport's connection class (_engine/sockets.py)
        conn = hosted.trio_rt_conn
        assert conn is not None  # set by the handshake that let it upgrade
        self.host.stats.connections_opened += 1
        welcome = None
        try:
            self._tokens.schedule(conn)
            welcome = self._welcome_message(conn)
        except Exception:
            # Before, this ended the handler and websockets closed with 1011: the same close,
            # served by `run` (it reads the close handshake through).
            log.exception("opening %r failed", conn)
            conn.close_soon(CloseCode.INTERNAL_ERROR, "internal error")
        return conn.run(welcome, self.ended)

    async def ended(self, conn: Connection) -> None:
        """The end of an opened connection (`Connection.run` calls it last): `finish`."""
        await self.finish(conn, True)

    def _welcome_message(self, conn: Connection) -> OutboundMessage | None:
        welcome = self._welcome(conn)
        return OutboundMessage(encode(welcome)) if welcome is not None else None

    def forget(self, conn: Connection) -> bool:
        """Unregister `conn` and its memberships (sync, idempotent). True the first time."""
        self._tokens.cancel(conn.id)
        if self.connections.pop(conn.id, None) is None:
            return False
        self._admission.forget(conn.id)
        self._caps.release(conn.id)
        self._rooms.leave_all(conn)
        conn.mark_closed()
        return True

    async def finish(self, conn: Connection, accepted: bool) -> None:
        """The end of a connection (opened or not): `forget`, then, if the connection
        handlers had `accepted` it, the disconnect handlers."""
        if not self.forget(conn):
            return
        options = self.host.options
        self.host.stats.connections_closed += 1
        if not accepted:
            return
        code = conn.close_code
        assert code is not None  # CLOSED
        for handler in self.disconnect_handlers:
            with trio.move_on_after(options.close_timeout) as scope:
                try:
                    await handler(conn, code)
                except Exception:
                    log.exception("disconnect handler failed for %r", conn)
            if scope.cancelled_caught:
                log.error("disconnect handler timed out for %r", conn)

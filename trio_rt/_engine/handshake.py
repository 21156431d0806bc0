"""HandshakeAdmission: who gets a WebSocket, decided during the opening handshake.

websockets calls two hooks before it answers the upgrade; this part is both, plus the
`HandshakeHost` its connection class calls back (`_transport/ws_connection.py`):

- `process_request`: a plain HTTP request goes to the side door (`HttpRoutes`: /health, the
  app's routes). An upgrade is checked in this order, each refusal an HTTP answer counted in
  `ServerStats.handshakes_rejected` under its reason: shutting down (503), Origin not allowed
  (403), server full (503), too many connections from the peer's address (429); then the
  `Connection` is created and registered, the connection handlers run in order (the
  authenticator first; `Reject` -> its status, any other exception -> 500), and the per-user
  cap is checked on the `user_id` they set (429).
- `select_subprotocol`: the client's first offer the server supports, never a refusal.
- `handshake_abandoned`: a registered connection that never opened (the handshake timed out,
  failed or was refused late) is finished as the manager finishes every connection.

docs/security.md ("Connection caps, Origin, transport limits").
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from websockets.http11 import Request as WsRequest
from websockets.http11 import Response
from websockets.trio.server import ServerConnection
from websockets.typing import Subprotocol

from .._core.caps import ConnectionCaps
from .._core.options import ServerOptions
from .._core.stats import ServerStats
from .connection import Connection
from .http import HttpResponse, HttpRoutes, Reject, is_websocket_upgrade, to_ws_response
from .sockets import HostedSocket

__all__ = ["ConnectionHandler", "HandshakeAdmission"]

log = logging.getLogger("trio_rt")

ConnectionHandler = Callable[[Connection], Awaitable[None]]


class _DebugLogAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Logs what websockets logs at INFO at DEBUG instead (other levels unchanged)."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG if level == logging.INFO else level, msg, *args, **kwargs)


_QUIET_HTTP_LOG = _DebugLogAdapter(logging.getLogger("trio_rt.websockets"), {})


class HandshakeAdmission:
    """The handshake's checks (see the module docstring).

    `connections` is the server's registry (id -> connection), which this fills; `caps`
    counts them per address and user; `new_connection(ws)` builds a `Connection`;
    `forget(conn)` undoes a registration (sync);
    `finish(conn, accepted)` ends a connection that never opened (disconnect handlers when
    `accepted`). `handlers` are the connection handlers, in order; `closing` (set by the
    manager's shutdown) answers every new upgrade with 503.
    """

    def __init__(
        self,
        options: ServerOptions,
        stats: ServerStats,
        connections: dict[str, Connection],
        caps: ConnectionCaps,
        routes: HttpRoutes,
        new_connection: Callable[[ServerConnection], Connection],
        forget: Callable[[Connection], bool],
        finish: Callable[[Connection, bool], Awaitable[None]],
    ) -> None:
        self.options = options
        self.caps = caps
        self.handlers: list[ConnectionHandler] = []
        self.closing = False
        self._stats = stats
        self._connections = connections
        self._routes = routes
        self._new_connection = new_connection
        self._forget = forget
        self._finish = finish

    async def process_request(self, ws: ServerConnection, request: WsRequest) -> Response | None:
        """websockets' `process_request` hook: None lets the upgrade go on."""
        if not is_websocket_upgrade(request):
            # Plain HTTP (health checks, /metrics, app routes polled every few seconds):
            # websockets' "HTTP response sent" and "connection closed" lines go to DEBUG.
            ws.protocol.logger = ws.logger = _QUIET_HTTP_LOG
            return await self._routes.respond(request)
        o = self.options
        stats = self._stats
        if self.closing:
            stats.rejected("shutting_down")
            return _refusal(503, "server shutting down", **{"Retry-After": "1"})
        if o.allowed_origins is not None and not self._origin_allowed(request):
            stats.rejected("origin")
            return _refusal(403, "origin not allowed")
        limit = o.max_connections
        if limit is not None and len(self._connections) >= limit:
            stats.rejected("server_full")
            return _refusal(503, "server full", **{"Retry-After": "5"})
        # The transport's connection class carries the Connection (_engine/sockets.py).
        hosted = cast(HostedSocket, ws)
        conn = self._new_connection(ws)
        ip = conn.request.remote_address[0] if conn.request.remote_address else None
        caps = self.caps
        if caps.ip_full(ip):
            stats.rejected("ip_limit")
            return _refusal(429, "too many connections from this address", **{"Retry-After": "5"})
        self._connections[conn.id] = conn
        hosted.trio_rt_conn = conn
        caps.count_ip(conn.id, ip)
        try:
            for handler in self.handlers:
                await handler(conn)
            if caps.user_full(conn.user_id):
                raise Reject(429, "too many connections for this user", **{"Retry-After": "5"})
            caps.count_user(conn.id, conn.user_id)
        except Reject as r:
            self._forget(conn)
            hosted.trio_rt_conn = None
            stats.rejected(f"http_{r.status}")
            return _refusal(r.status, r.reason, **r.headers)
        except Exception:
            log.exception("connection handler failed; answering 500")
            self._forget(conn)
            hosted.trio_rt_conn = None
            stats.rejected("handler_error")
            return _refusal(500, "internal server error")
        return None

    def _origin_allowed(self, request: WsRequest) -> bool:
        origins = request.headers.get_all("Origin")
        if not origins:
            return self.options.allow_missing_origin
        allowed = self.options.allowed_origins
        return len(origins) == 1 and allowed is not None and origins[0].lower() in allowed

    def select_subprotocol(self, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        """`HandshakeHost.select_subprotocol`: websockets' hook, for any connection."""
        # The client's first offer that we support; never fail the handshake over it (a
        # `bearer.<token>` entry is read by the auth handler, never echoed back).
        supported = self.options.subprotocols
        for proto in offered:
            if proto in supported:
                return proto
        return None

    async def handshake_abandoned(self, conn: Connection, accepted: bool) -> None:
        """`HandshakeHost`: `conn` never opened; undo its registration."""
        self._stats.rejected("aborted")  # registered, never upgraded
        await self._finish(conn, accepted)


def _refusal(status: int, error: str, **headers: str) -> Response:
    return to_ws_response(HttpResponse.json(status, {"error": error}, **headers))

"""TokenExpiry: a connection whose credentials expire is closed (4004) unless it refreshes.

`Connection.expires_at` (Unix time; set by `JWTAuthenticator` during the handshake, or by the
app's connection handler) becomes a deadline on one `Timers` for the whole server, keyed by
connection id: no task or cancel scope per connection. The built-in ``refresh`` command
verifies a new token for the same user with the server's authenticator and moves the
deadline. docs/security.md ("Token expiry and refresh").
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import trio

from .._core.protocol import CloseCode, ErrorCode, ProtocolError, Refresh, reply
from .._core.stats import ServerStats
from .connection import Connection
from .timers import Timers

if TYPE_CHECKING:
    from .auth import JWTAuthenticator

__all__ = ["TokenExpiry"]


class TokenExpiry:
    """`schedule(conn)` (sync) sets or clears `conn`'s deadline from its `expires_at`;
    `cancel(conn_id)` forgets it; `run` is the one timer task (the manager's nursery), which
    closes an expired connection with 4004 (counted in `ServerStats.tokens_expired`).
    `refresh_command` answers ``refresh`` (``not_permitted`` without an authenticator)."""

    def __init__(
        self,
        auth: JWTAuthenticator | None,
        connections: Mapping[str, Connection],
        stats: ServerStats,
    ) -> None:
        self.auth = auth
        self.timers = Timers[str]()  # connection id -> when its token expires
        self._connections = connections
        self._stats = stats

    def schedule(self, conn: Connection) -> None:
        expires_at = conn.expires_at
        if expires_at is None:
            self.timers.cancel(conn.id)
            return
        self.timers.set(conn.id, trio.current_time() + (expires_at - time.time()))

    def cancel(self, conn_id: str) -> None:
        self.timers.cancel(conn_id)

    async def run(self) -> None:
        await self.timers.run(self._expired)

    def _expired(self, conn_id: str) -> None:
        """The timer fired for a connection (its latest token's expiry: a refresh replaced the
        deadline): close it with 4004."""
        conn = self._connections.get(conn_id)
        if conn is not None and conn.expires_at is not None:
            self._stats.tokens_expired += 1
            conn.close_soon(CloseCode.TOKEN_EXPIRED, "token expired")

    async def refresh_command(self, conn: Connection, command: Refresh) -> None:
        expires_at = await self._refresh(conn, command.token)
        await conn.send(reply("refreshed", command.request_id, expires_at=expires_at))

    async def _refresh(self, conn: Connection, token: str) -> float | None:
        auth = self.auth
        if auth is None:
            raise ProtocolError(
                ErrorCode.NOT_PERMITTED, "token refresh is not enabled on this server"
            )
        # Imported here: _auth needs the "auth" extra (pyjwt), loaded only with an
        # authenticator, which exists here, so this is a lookup in sys.modules.
        from .auth import AuthError

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
        self.schedule(conn)
        await trio.lowlevel.checkpoint()
        return claims.expires_at

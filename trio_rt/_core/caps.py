"""ConnectionCaps: open connections counted per peer address and per user, sans-IO.

The manager asks before it admits a connection (`ip_full`, `user_full`), counts it once
admitted (`count_ip`, `count_user`) and releases it when the connection ends (`release`,
idempotent). Limits of None count nothing. docs/security.md ("Connection caps, Origin,
transport limits").
"""

from __future__ import annotations

__all__ = ["ConnectionCaps"]


class ConnectionCaps:
    """Per-address and per-user counts of open connections against their limits."""

    def __init__(self, per_ip: int | None, per_user: int | None) -> None:
        self.per_ip_limit = per_ip
        self.per_user_limit = per_user
        self._per_ip: dict[str, int] = {}
        self._per_user: dict[str, int] = {}
        self._counted: dict[str, tuple[str | None, str | None]] = {}  # conn id -> (ip, user)

    def ip_full(self, ip: str | None) -> bool:
        limit = self.per_ip_limit
        return limit is not None and ip is not None and self._per_ip.get(ip, 0) >= limit

    def user_full(self, user: str | None) -> bool:
        limit = self.per_user_limit
        return limit is not None and user is not None and self._per_user.get(user, 0) >= limit

    def count_ip(self, conn_id: str, ip: str | None) -> None:
        if self.per_ip_limit is None or ip is None:
            return
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        self._counted[conn_id] = (ip, self._counted.get(conn_id, (None, None))[1])

    def count_user(self, conn_id: str, user: str | None) -> None:
        if self.per_user_limit is None or user is None:
            return
        self._per_user[user] = self._per_user.get(user, 0) + 1
        self._counted[conn_id] = (self._counted.get(conn_id, (None, None))[0], user)

    def release(self, conn_id: str) -> None:
        counted = self._counted.pop(conn_id, None)
        if counted is None:
            return
        for counts, key in ((self._per_ip, counted[0]), (self._per_user, counted[1])):
            if key is not None:
                n = counts.get(key, 0) - 1
                if n > 0:
                    counts[key] = n
                else:
                    counts.pop(key, None)

    def open_for(self, *, ip: str | None = None, user: str | None = None) -> int:
        """Connections counted for `ip` or `user` (for tests and stats)."""
        if ip is not None:
            return self._per_ip.get(ip, 0)
        return self._per_user.get(user, 0) if user is not None else 0

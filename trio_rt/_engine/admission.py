"""MessageAdmission: a server's message rate limits applied to each incoming message.

The arithmetic is `_core/ratelimit.py`'s (token buckets, local or `RedisRateLimiter`); this picks
the budget for a message type, keys it by user (by connection when anonymous; `bucket_key`:
no two users ever share a bucket), answers a refusal with `rate_limited` and `retry_after`,
and closes a connection (4029) after `rate_limit_max_refusals` refusals in a row.
docs/security.md ("Rate limits").
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

from .._core.options import ServerOptions
from .._core.protocol import CloseCode, ErrorCode, error_message
from .._core.ratelimit import LocalRateLimiter, Rate, RateLimiter, bucket_key

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["MessageAdmission"]


class _Counters(Protocol):
    rate_limited: int


class MessageAdmission:
    """`admit(conn, type, request_id)`: True to handle the message; False when refused (the
    reply is sent, and the connection closed after too many refusals in a row). `forget` a
    connection when it ends. Refusals are added to `counters.rate_limited`."""

    def __init__(
        self, options: ServerOptions, limiter: RateLimiter | None, counters: _Counters
    ) -> None:
        self.limiter: RateLimiter = limiter if limiter is not None else LocalRateLimiter()
        o = options
        self.default_rate = (
            None
            if o.rate_limit is None
            else Rate(o.rate_limit, o.rate_limit_period, o.rate_limit_burst)
        )
        self.type_rates: dict[str, Rate | None] = {
            t: None if n is None else Rate(n, o.rate_limit_period) for t, n in o.rate_limits.items()
        }
        self.max_refusals = o.rate_limit_max_refusals
        self._counters = counters
        self._refusals: dict[str, int] = {}  # connection id -> refused messages in a row

    def forget(self, conn_id: str) -> None:
        self._refusals.pop(conn_id, None)

    async def admit(
        self, conn: Connection, mtype: str | None, request_id: str | int | None
    ) -> bool:
        """`mtype` None: an invalid frame, which counts against the default budget."""
        rates = self.type_rates
        if mtype is not None and mtype in rates:
            rate = rates[mtype]
            budget: str | None = mtype
        else:
            rate = self.default_rate
            budget = None
        if rate is None:
            return True
        key = bucket_key(conn.user_id, conn.id, budget)  # never shared by two users
        limiter = self.limiter
        if isinstance(limiter, LocalRateLimiter):
            decision = limiter.hit_now(key, rate)  # no await: the common case
        else:
            decision = await limiter.hit(key, rate)
        if decision.allowed:
            if self._refusals:
                self._refusals.pop(conn.id, None)
            return True
        self._counters.rate_limited += 1
        refusals = self._refusals[conn.id] = self._refusals.get(conn.id, 0) + 1
        retry_after = math.ceil(decision.retry_after * 1000) / 1000
        await conn.send(
            error_message(
                ErrorCode.RATE_LIMITED,
                "rate limit exceeded",
                request_id=request_id,
                retry_after=retry_after,
            )
        )
        if refusals >= self.max_refusals:
            conn.close_soon(CloseCode.RATE_LIMITED, "rate limit exceeded")
        return False

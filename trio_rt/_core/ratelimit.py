"""Rate limits: token buckets, sans-IO, plus the limiter seam the manager calls.

A `Rate` is `limit` messages per `period` seconds with bursts of up to `burst` (default
`limit`): a bucket holds at most `burst` tokens, refills at `limit / period` tokens per
second, and each message takes one token. A message that finds less than one token is refused
with `retry_after`: the seconds until one token is back (nothing is consumed by a refusal, so a
client that keeps hammering gets no further).

`take` is the arithmetic, a pure function of the bucket state and the clock. `LocalRateLimiter`
keeps buckets in a dict (one process); `RedisRateLimiter` (trio_rt.redis) runs the
same arithmetic in one Lua script on Redis, so the clients of one user spread over several
servers share one budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .checks import int_problem, number_problem, require

__all__ = ["Decision", "LocalRateLimiter", "Rate", "RateLimiter", "bucket_key", "take"]


@dataclass(frozen=True, slots=True)
class Rate:
    """`limit` messages per `period` seconds; bursts of up to `burst` (default: `limit`)."""

    limit: int
    period: float = 60.0
    burst: int | None = None

    def __post_init__(self) -> None:
        require(
            int_problem("limit", self.limit),
            number_problem("period", self.period),
            int_problem("burst", self.burst, allow_none=True),
        )

    @property
    def capacity(self) -> int:
        return self.burst if self.burst is not None else self.limit

    @property
    def per_second(self) -> float:
        return self.limit / self.period


@dataclass(frozen=True, slots=True)
class Decision:
    """`allowed`, or refused with `retry_after` seconds until the next message would pass."""

    allowed: bool
    retry_after: float = 0.0


def take(tokens: float, updated: float, now: float, rate: Rate) -> tuple[Decision, float]:
    """One message against a bucket that had `tokens` at time `updated`.

    Returns the decision and the bucket's tokens at `now` after it. A clock that went
    backwards refills nothing (never a negative refill). Pure: the caller stores the result.
    """
    elapsed = max(0.0, now - updated)
    current = min(float(rate.capacity), tokens + elapsed * rate.per_second)
    if current >= 1.0:
        return Decision(True), current - 1.0
    return Decision(False, (1.0 - current) / rate.per_second), current


def bucket_key(user_id: str | None, connection_id: str, message_type: str | None = None) -> str:
    """The bucket of a message: its user's (its connection's when anonymous), in the default
    budget (`message_type` None) or in the budget of a type that has its own.

    ``u:<length>:<user_id>`` or ``c:<length>:<connection_id>``, then ``:<type>`` for a typed
    budget. The length makes the identity self-delimiting, so two different (identity, type)
    pairs never share a key, whatever the user id contains: user ``bob:typing`` (key
    ``u:10:bob:typing``) cannot spend user ``bob``'s ``typing`` budget (``u:3:bob:typing``).
    The Redis limiter uses the same keys behind its prefix.
    """
    if user_id is not None:
        identity = f"u:{len(user_id)}:{user_id}"
    else:
        identity = f"c:{len(connection_id)}:{connection_id}"
    return identity if message_type is None else f"{identity}:{message_type}"


@runtime_checkable
class RateLimiter(Protocol):
    """Where the manager keeps its buckets. `key` names one bucket (identity and type)."""

    async def hit(self, key: str, rate: Rate) -> Decision:
        """Count one message against bucket `key`; never raises for a refusal."""
        ...


class LocalRateLimiter:
    """Buckets in this process: `hit` is a dict lookup and `take`.

    Memory: one small entry per active key; `prune` drops buckets that are full again (they
    carry no information), and `hit` prunes by itself every `prune_every` calls.
    """

    def __init__(self, *, clock: Callable[[], float] | None = None, prune_every: int = 10_000):
        self._clock: Callable[[], float] = clock if clock is not None else time.monotonic
        self._buckets: dict[str, tuple[float, float, Rate]] = {}
        self._prune_every = prune_every
        self._calls = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def hit_now(self, key: str, rate: Rate) -> Decision:
        """The sync core of `hit`."""
        now = self._clock()
        self._calls += 1
        if self._calls >= self._prune_every:
            self._calls = 0
            self.prune(now)
        state = self._buckets.get(key)
        tokens, updated = (float(rate.capacity), now) if state is None else state[:2]
        decision, left = take(tokens, updated, now, rate)
        self._buckets[key] = (left, now, rate)
        return decision

    async def hit(self, key: str, rate: Rate) -> Decision:
        return self.hit_now(key, rate)

    def prune(self, now: float | None = None) -> int:
        """Forget the buckets that have refilled completely; returns how many."""
        if now is None:
            now = self._clock()
        full = [
            key
            for key, (tokens, updated, rate) in self._buckets.items()
            if tokens + max(0.0, now - updated) * rate.per_second >= rate.capacity
        ]
        for key in full:
            del self._buckets[key]
        return len(full)

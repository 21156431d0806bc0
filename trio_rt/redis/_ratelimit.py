"""RedisRateLimiter: the token buckets of `trio_rt._core.ratelimit`, shared by every server on
Redis.

One Lua script per message: it reads the bucket (a hash with `tokens` and `ts`), refills it
on Redis's clock (``TIME``: servers with skewed clocks agree), takes one token or computes
`retry_after`, writes it back and sets an expiry for when the bucket would be full again (a
full bucket carries no information). Atomic, so concurrent messages of one user on several
servers never both take the last token.

Cost: one Redis round trip per message, on a pipelined Trio-native connection (the messages of
one scheduler pass share one write; docs/security.md). The connection is opened on first use and
again after a failure, by the caller itself: the limiter has no task of its own.

Redis unreachable: the limiter fails open to a per-process `LocalRateLimiter` with the same
rates (logged once per outage), so an outage neither stops every client nor lifts the limits.
"""

from __future__ import annotations

import logging

from .._core.ratelimit import Decision, LocalRateLimiter, Rate
from ._client import KeyedStore
from ._resp import Script

__all__ = ["RedisRateLimiter"]

log = logging.getLogger("trio_rt.ratelimit")

# KEYS[1]: the bucket. ARGV: capacity, tokens per millisecond.
# Returns {allowed (0/1), retry_after in seconds as a string} (Lua numbers would be truncated).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local cap = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then
  tokens = cap
  ts = now
end
tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local retry = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry = (1 - tokens) / rate / 1000
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((cap - tokens) / rate) + 1000)
return {allowed, tostring(retry)}
"""


_SCRIPT = Script(_TAKE)


class RedisRateLimiter(KeyedStore):
    """Rate-limit buckets in Redis: ``WebSocketManager(rate_limiter=RedisRateLimiter(url))``.

    Keys are ``<prefix>`` + `trio_rt._core.ratelimit.bucket_key` (``u:<length>:<user>`` or
    ``c:<length>:<connection>``, then ``:<type>`` for a type with its own budget): the length
    keeps the users apart whatever their ids contain.
    With `cluster=True`, `url` names any node of a Redis Cluster: each bucket is one key, so
    the script runs on the shard that owns it. `socket_timeout` bounds connecting and each
    reply. The manager calls `aclose` when it stops (it closes the connections).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "trio_rt:rl:",
        cluster: bool = False,
        socket_timeout: float = 2.0,
    ) -> None:
        super().__init__(url, prefix=prefix, cluster=cluster, socket_timeout=socket_timeout)
        self._fallback = LocalRateLimiter()
        self._down = False
        self.failures = 0  # calls answered by the local fallback because Redis failed

    async def hit(self, key: str, rate: Rate) -> Decision:
        try:
            allowed, retry = await self._client.eval(
                _SCRIPT, [self.prefix + key], [rate.capacity, rate.per_second / 1000.0]
            )
        except Exception as exc:
            self.failures += 1
            if not self._down:
                self._down = True
                log.warning(
                    "rate limiter: Redis at %s failed (%r); limiting locally", self.url, exc
                )
            return self._fallback.hit_now(key, rate)
        if self._down:
            self._down = False
            log.warning("rate limiter: Redis at %s answers again", self.url)
        if int(allowed):
            return Decision(True)
        return Decision(False, float(retry))

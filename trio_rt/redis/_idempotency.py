"""RedisIdempotencyStore: the outcomes of acknowledged publishes, shared by every server.

The `trio_rt._core.acks.IdempotencyStore` contract on Redis: one string key per (user, publish id)
holding the record of `trio_rt._core.acks.encode_record` (``p:<token>`` while an attempt is in
flight, ``d:<json>`` once stored) with a TTL (``PX``), so records of a dead server or of an
old window expire by themselves. `claim` is ``SET NX`` and a ``GET`` in one Lua script (Redis
7.0 has no ``SET NX GET``); `complete` and `release` compare the claim's token first, in a
script too, so an attempt whose claim expired never overwrites a newer attempt's record.

Each call is one round trip on the Trio-native pipelined connection (`_client.py`); the
connection is opened on first use and again after a failure, by the caller: no task of its
own. A Redis failure raises (`RedisError`): the publisher refuses the publish rather than
give up exactly once silently.
"""

from __future__ import annotations

from .._core.acks import AckResult, Done, Pending, Record, decode_record, encode_record
from ._client import KeyedStore
from ._resp import Script

__all__ = ["RedisIdempotencyStore"]

# KEYS[1]: the key. ARGV: the pending record, the TTL in ms. The current record, or nil (claimed).
_CLAIM = Script(
    """
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
)
# KEYS[1]: the key. ARGV: the pending record expected, the new record, its TTL in ms.
_COMPLETE = Script(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
)
# KEYS[1]: the key. ARGV: the pending record expected.
_RELEASE = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""
)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisIdempotencyStore(KeyedStore):
    """Idempotency records in Redis:
    ``Publisher(manager, idempotency=RedisIdempotencyStore(url))``.

    Keys are ``<prefix>`` + `trio_rt._core.acks.idempotency_key`. With `cluster=True`, `url`
    names any node of a Redis Cluster (each record is one key). `socket_timeout` bounds
    connecting and each reply. `aclose` closes the connections (a later call reopens them).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "trio_rt:idem:",
        cluster: bool = False,
        socket_timeout: float = 2.0,
    ) -> None:
        super().__init__(url, prefix=prefix, cluster=cluster, socket_timeout=socket_timeout)

    async def claim(self, key: str, token: str, ttl: float) -> Record | None:
        current = await self._client.eval(
            _CLAIM, [self.prefix + key], [encode_record(Pending(token)), _ms(ttl)]
        )
        if current is None:
            return None
        text = current.decode("utf-8") if isinstance(current, bytes) else str(current)
        return decode_record(text)

    async def complete(self, key: str, token: str, result: AckResult, ttl: float) -> bool:
        done = await self._client.eval(
            _COMPLETE,
            [self.prefix + key],
            [encode_record(Pending(token)), encode_record(Done(result)), _ms(ttl)],
        )
        return bool(int(done))

    async def release(self, key: str, token: str) -> None:
        await self._client.eval(_RELEASE, [self.prefix + key], [encode_record(Pending(token))])

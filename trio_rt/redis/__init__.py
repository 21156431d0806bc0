"""Redis for Trio: scale-out across servers (``trio_rt[redis]``).

- :class:`RedisBroker` (and its :class:`RedisBrokerStats`): the `Broker` seam over Redis
  pub/sub, or sharded pub/sub on a Redis Cluster;
- :class:`RedisSequencer`: positions (offset + epoch) of a stream shared by every process, one
  Redis hash and a Lua script per stream;
- :class:`RedisRateLimiter`: the token buckets of `trio_rt.LocalRateLimiter`, shared by every
  server;
- :class:`RedisPresence`: who is in each room, across servers (the `PresenceManager` seam);
- :class:`RedisIdempotencyStore`: the outcomes of acknowledged publishes (`trio_rt.Publisher`),
  shared by every server, so a resent publish is stored once;
- :class:`ServerRegistry`: which servers are alive, with heartbeats, and who owns a key;
- the errors they raise: :class:`RedisError`, :class:`RedisUnavailable` (the connection failed:
  retryable), :class:`RedisTimeout`, :class:`RedisReplyError` (Redis answered with an error).

```python
from trio_rt import WebSocketManager
from trio_rt.redis import RedisBroker, RedisRateLimiter

manager = WebSocketManager(
    broker=RedisBroker("redis://127.0.0.1:6379/0"),
    rate_limiter=RedisRateLimiter("redis://127.0.0.1:6379/0"),
)
```

The same names are importable from `trio_rt` (``trio_rt.RedisBroker``), which imports this
package on first use.

Every component talks to Redis over Trio-native connections (``_connection.py``: Trio sockets,
RESP parsed by hiredis's C reader, commands pipelined; ``_client.py``: one server or a Redis
Cluster with slot routing), so no asyncio loop runs and nothing here patches asyncio. The
only requirement of the ``redis`` extra is hiredis.
"""

try:  # the `redis` extra: say so instead of a bare "No module named 'hiredis'"
    import hiredis as _hiredis  # noqa: F401
except ModuleNotFoundError as exc:
    from .._extras import missing_extra_error

    raise missing_extra_error("trio_rt.redis", "redis", exc) from exc

from ._broker import RedisBroker, RedisBrokerStats
from ._idempotency import RedisIdempotencyStore
from ._presence import RedisPresence
from ._ratelimit import RedisRateLimiter
from ._registry import ServerRegistry
from ._resp import RedisError, RedisReplyError, RedisTimeout, RedisUnavailable
from ._sequencer import RedisSequencer

__all__ = [
    "RedisBroker",
    "RedisBrokerStats",
    "RedisError",
    "RedisIdempotencyStore",
    "RedisPresence",
    "RedisRateLimiter",
    "RedisReplyError",
    "RedisSequencer",
    "RedisTimeout",
    "RedisUnavailable",
    "ServerRegistry",
]

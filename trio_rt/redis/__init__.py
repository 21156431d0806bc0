"""Redis for Trio: scale-out across servers (``trio_rt[redis]``).

- :class:`RedisBroker` (and its :class:`RedisBrokerStats`): the `Broker` seam over Redis
  pub/sub, or sharded pub/sub on a Redis Cluster;
- :class:`RedisSequencer`: positions (offset + epoch) of a stream shared by every process, one
  Redis hash and a Lua script per stream;
- :class:`RedisRateLimiter`: the token buckets of `trio_rt.LocalRateLimiter`, shared by every
  server;
- :class:`ServerRegistry`: which servers are alive, with heartbeats, and who owns a key.

```python
from trio_rt import WebSocketManager
from trio_rt.redis import RedisBroker, RedisRateLimiter

manager = WebSocketManager(
    broker=RedisBroker("redis://127.0.0.1:6379/0"),
    rate_limiter=RedisRateLimiter("redis://127.0.0.1:6379/0"),
)
```

The same names are importable from `trio_rt` (``trio_rt.RedisBroker``), which imports this
package on first use. redis-py is an asyncio library: every component runs it in the one
trio-asyncio loop of its owner (``_aio.py``, the bridge), and importing trio_asyncio patches
asyncio globally, so nothing imports this package before a Redis component is used.

This package is named ``trio_rt.redis``; the modules in it import redis-py as ``redis``
(absolute imports always name the top-level package, never this one).
"""

try:  # the `redis` extra: say so instead of a bare "No module named 'redis'"
    import redis as _redis_py  # noqa: F401  (redis-py, not this package)
    import trio_asyncio as _trio_asyncio  # noqa: F401
except ModuleNotFoundError as exc:
    from .._extras import missing_extra_error

    raise missing_extra_error("trio_rt.redis", "redis", exc) from exc

from ._broker import RedisBroker, RedisBrokerStats
from ._ratelimit import RedisRateLimiter
from ._registry import ServerRegistry
from ._sequencer import RedisSequencer

__all__ = [
    "RedisBroker",
    "RedisBrokerStats",
    "RedisRateLimiter",
    "RedisSequencer",
    "ServerRegistry",
]

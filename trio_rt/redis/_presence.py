"""RedisPresence: the `PresenceManager` seam (trio_rt/_engine/presence.py) on Redis, shared by every
server (docs/presence.md).

Storage, per room, five keys with one hash tag (one slot: a Redis Cluster runs each script on
the shard that owns the room), ``{<prefix>:<room>}`` then:

- ``:c`` hash, field ``<server id>\\x1f<user key>`` -> that server's connections of the user;
- ``:p`` hash, same field -> the user id and public info (JSON);
- ``:x`` sorted set, same field -> its deadline (Redis's clock in ms + the writer's ttl);
- ``:u`` hash, user key -> how many servers have an entry for it (1 -> 0 is a leave);
- ``:m`` hash: ``conns`` (the connection total) and ``v`` (the room's presence version).

Every call is one Lua script that takes the time from Redis (``TIME``: servers with skewed
clocks agree on what expired), first prunes the entries whose deadline passed (a dead
server's) and then reads or writes: the same steps as `apply_sync` / `prune_expired` in
trio_rt/_core/presence_rules.py (the memory store), and the same contract tests. Counts are O(1)
(``HLEN`` of ``:u``, ``conns``); the member list is O(entries) and read only up to the
caller's limit. When the room empties its keys are deleted but ``:m`` (the version) is kept
for a day, so versions keep growing for clients that remember one.

Redis is reached over the Trio-native client (`RedisClient` / `RedisClusterClient`), opened on
first use; a call raises `RedisUnavailable` / `RedisReplyError` to its caller (the presence
service logs a failed write and retries it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._core.presence_rules import (
    PresenceResult,
    PresenceStats,
    PresenceTransition,
    PresenceUpdate,
    aggregate,
    check_server_id,
    decode_payload,
)
from ._client import Commands, RedisClient, RedisClusterClient
from ._resp import Script, require_url

__all__ = ["RedisPresence"]

_HEAD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local function remove(f)
  local n = tonumber(redis.call('HGET', KEYS[1], f) or '0')
  local p = redis.call('HGET', KEYS[2], f) or '{}'
  redis.call('HDEL', KEYS[1], f)
  redis.call('HDEL', KEYS[2], f)
  redis.call('ZREM', KEYS[3], f)
  redis.call('HINCRBY', KEYS[5], 'conns', -n)
  local key = string.sub(f, string.find(f, '\\31', 1, true) + 1)
  if redis.call('HINCRBY', KEYS[4], key, -1) <= 0 then
    redis.call('HDEL', KEYS[4], key)
    local v = redis.call('HINCRBY', KEYS[5], 'v', 1)
    out[#out + 1] = 0
    out[#out + 1] = key
    out[#out + 1] = p
    out[#out + 1] = v
  end
end
for _, f in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  remove(f)
end
"""

_TAIL = """
local users = redis.call('HLEN', KEYS[4])
local conns = tonumber(redis.call('HGET', KEYS[5], 'conns') or '0')
local v = tonumber(redis.call('HGET', KEYS[5], 'v') or '0')
if users == 0 then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
  if v > 0 then
    redis.call('HSET', KEYS[5], 'conns', 0)
    redis.call('PEXPIRE', KEYS[5], 86400000)
  end
else
  redis.call('PERSIST', KEYS[5])
end
return {users, conns, v, out, members}
"""

# ARGV: server id, ttl in ms, then (user key, connections, payload) per entry.
_SYNC = (
    _HEAD
    + """
local sid, ttl = ARGV[1], tonumber(ARGV[2])
for i = 3, #ARGV, 3 do
  local key, n, p = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local f = sid .. '\\31' .. key
  local old = tonumber(redis.call('HGET', KEYS[1], f) or '0')
  if n > 0 then
    redis.call('HSET', KEYS[1], f, n)
    redis.call('HSET', KEYS[2], f, p)
    redis.call('ZADD', KEYS[3], now + ttl, f)
    redis.call('HINCRBY', KEYS[5], 'conns', n - old)
    if old == 0 and redis.call('HINCRBY', KEYS[4], key, 1) == 1 then
      local v = redis.call('HINCRBY', KEYS[5], 'v', 1)
      out[#out + 1] = 1
      out[#out + 1] = key
      out[#out + 1] = p
      out[#out + 1] = v
    end
  elseif old > 0 then
    remove(f)
  end
end
local members = {}
"""
    + _TAIL
)

# ARGV: the member limit (-1: counts only).
_READ = (
    _HEAD
    + """
local members = {}
local limit = tonumber(ARGV[1])
if limit >= 0 and redis.call('HLEN', KEYS[4]) <= limit then
  members = {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
end
"""
    + _TAIL
)

_SCRIPTS = {"sync": Script(_SYNC), "read": Script(_READ)}


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else str(value)


class RedisPresence:
    """Presence entries in Redis: ``PresenceService(manager, RedisPresence(url))`` on every
    server, with the same `prefix`.

    `redis` is a URL (the store opens its own client: `cluster=True` for a Redis Cluster,
    `timeout` bounds connecting and each reply; `aclose` closes it) or a client to share
    (`RedisClient` / `RedisClusterClient`: left open by `aclose`)."""

    def __init__(
        self,
        redis: str | Commands = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "trio_rt:presence",
        cluster: bool = False,
        timeout: float = 5.0,
    ) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise ValueError("prefix must be a non-empty string")
        if isinstance(redis, str):
            factory = RedisClusterClient if cluster else RedisClient
            self._client: Commands = factory(require_url(redis), timeout=timeout)
            self._owned = True
        else:
            self._client = redis
            self._owned = False
        self.prefix = prefix

    def keys(self, room: str) -> list[str]:
        """The five keys of `room` (see the module docstring)."""
        tag = f"{{{self.prefix}:{room}}}"
        return [f"{tag}:c", f"{tag}:p", f"{tag}:x", f"{tag}:u", f"{tag}:m"]

    async def sync(
        self, room: str, server_id: str, updates: Sequence[PresenceUpdate], ttl: float
    ) -> PresenceResult:
        check_server_id(server_id)
        args: list[Any] = [server_id, max(1, round(ttl * 1000))]
        for update in updates:
            args += [update.key, update.connections, update.payload()]
        reply = await self._client.eval(_SCRIPTS["sync"], self.keys(room), args)
        return self._result(reply)

    async def members(self, room: str, limit: int) -> PresenceResult:
        reply = await self._client.eval(_SCRIPTS["read"], self.keys(room), [limit])
        result = self._result(reply)
        found = reply[4]
        if not found:
            if result.stats.users == 0:
                return PresenceResult(result.stats, result.transitions, [])
            return result  # above the limit: counts only
        counts, payloads = found
        pay = {_text(payloads[i]): payloads[i + 1] for i in range(0, len(payloads), 2)}
        entries = [
            (_text(counts[i]), int(counts[i + 1]), pay.get(_text(counts[i]), b"{}"))
            for i in range(0, len(counts), 2)
        ]
        return PresenceResult(result.stats, result.transitions, aggregate(entries))

    async def stats(self, room: str) -> PresenceResult:
        return self._result(await self._client.eval(_SCRIPTS["read"], self.keys(room), [-1]))

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()

    @staticmethod
    def _result(reply: list[Any]) -> PresenceResult:
        users, conns, version, flat = int(reply[0]), int(reply[1]), int(reply[2]), reply[3]
        transitions = []
        for i in range(0, len(flat), 4):
            user_id, info = decode_payload(flat[i + 2])
            transitions.append(
                PresenceTransition(
                    bool(flat[i]), _text(flat[i + 1]), user_id, info, int(flat[i + 3])
                )
            )
        return PresenceResult(PresenceStats(users, conns, version), transitions)

"""ServerRegistry: which trio_rt servers are alive, kept in Redis with heartbeats.

Storage (two keys, one hash tag so they live in one slot):

- ``{ns}:servers`` — a sorted set of server ids scored by the *deadline* of their last
  heartbeat (Redis's clock at the heartbeat + that server's ttl, in ms);
- ``{ns}:addresses`` — a hash from server id to the address it advertises.

Why a sorted set and not one key per server with a TTL: every read and write is one Lua script
that takes the time from Redis (``TIME``), so servers with skewed clocks agree on who is alive;
pruning expired entries and reading the live ones happen atomically in the same script (a
key-per-server design needs a separate index set and a race-prone clean-up of it); and each
server may use its own ttl, because the score is the deadline, not the heartbeat time.

A heartbeat refreshes this server's deadline and returns the live set, so `servers` (a local
snapshot) is never older than one heartbeat interval. `live_servers()` asks Redis afresh.
A clean exit removes the entry at once (shielded, bounded); a crashed server drops out when its
deadline passes.

Redis is reached over a Trio-native pipelined connection (`trio_rt.redis._client`): the
heartbeat task and queries from any task share it, and a cancelled call leaves nothing behind.

Redis down: heartbeats fail, are logged, and are retried with exponential backoff (never slower
than the heartbeat interval); the task that runs the registry never crashes for it.
`live_servers()` and `owner()` raise the Redis error (`RedisUnavailable`) to their caller;
`servers` keeps the last known snapshot for a caller that prefers stale over nothing.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import trio

from .._core.checks import require_positive_numbers
from .._core.rendezvous import rendezvous_owner
from ._client import RedisClient
from ._resp import Script, require_url

__all__ = ["ServerRegistry"]

log = logging.getLogger("trio_rt.registry")

# Shared by both scripts: prune the expired entries and list the live ones with addresses.
_LIVE = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
for _, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[2], id) or ''
end
return out
"""

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: servers, addresses. ARGV: id, address, ttl in ms.
# Returns {previous address if the id was still live, else '', then id, address, ...}.
_HEARTBEAT = (
    _NOW
    + """
local prev = redis.call('ZSCORE', KEYS[1], ARGV[1])
local out = {''}
if prev and tonumber(prev) > now then
  out[1] = redis.call('HGET', KEYS[2], ARGV[1]) or ''
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
"""
    + _LIVE
)

# KEYS: servers, addresses. Returns {id, address, ...}.
_LIST = _NOW + "local out = {}\n" + _LIVE

# KEYS: servers, addresses. ARGV: id.
_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""


_SCRIPTS = {"heartbeat": Script(_HEARTBEAT), "list": Script(_LIST), "leave": Script(_LEAVE)}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


def _check_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, not {value!r}")
    if not value.isprintable() or any(c.isspace() for c in value):
        raise ValueError(f"{name} must be printable with no whitespace: {value!r}")
    return value


class ServerRegistry:
    """This server's entry in the registry of live servers, kept alive by heartbeats.

    Use as ``async with ServerRegistry(...) as registry:`` or run `run` in a nursery
    (``await nursery.start(registry.run)``; it returns once the first heartbeat was attempted).
    """

    def __init__(
        self,
        redis_url: str,
        server_id: str,
        address: str,
        *,
        heartbeat_interval: float = 2.0,
        ttl: float = 6.0,
        namespace: str = "trio_rt",
        retry_initial: float = 0.1,
    ) -> None:
        self.redis_url = require_url(redis_url)
        self.server_id = _check_id("server_id", server_id)
        self.address = _check_id("address", address)
        self.namespace = _check_id("namespace", namespace)
        if "{" in namespace or "}" in namespace:
            raise ValueError("namespace must not contain braces (it is used as a hash tag)")
        require_positive_numbers(
            heartbeat_interval=heartbeat_interval, ttl=ttl, retry_initial=retry_initial
        )
        self.heartbeat_interval = float(heartbeat_interval)
        self.ttl = float(ttl)
        if self.ttl <= self.heartbeat_interval:
            raise ValueError("ttl must be greater than heartbeat_interval")
        self._retry_initial = min(float(retry_initial), self.heartbeat_interval)
        self._keys = [f"{{{namespace}}}:servers", f"{{{namespace}}}:addresses"]
        self._servers: dict[str, str] = {}
        self._registered = False
        self._heartbeats = 0
        self._running = False
        self._crashed = False
        self._stop = trio.Event()
        self._failures = 0  # consecutive failed heartbeats
        self._client: RedisClient | None = None  # set while running
        self._stack: AsyncExitStack | None = None

    # -- public API -----------------------------------------------------------------------------
    @property
    def servers(self) -> dict[str, str]:
        """The live servers as of the last heartbeat or query (a copy; may be stale)."""
        return dict(self._servers)

    @property
    def registered(self) -> bool:
        """Whether the last heartbeat reached Redis."""
        return self._registered

    @property
    def heartbeats(self) -> int:
        """Successful heartbeats so far."""
        return self._heartbeats

    async def live_servers(self) -> dict[str, str]:
        """``{server_id: address}`` of every live server, from Redis (expired ones pruned)."""
        flat = await self._script("list")
        self._servers = _pairs(flat)
        return dict(self._servers)

    async def owner(self, key: str | bytes) -> tuple[str, str] | None:
        """``(server_id, address)`` of the live server that owns `key` by rendezvous hashing,
        or None if no server is live."""
        return self.owner_among(key, await self.live_servers())

    def cached_owner(self, key: str | bytes) -> tuple[str, str] | None:
        """Like `owner`, from the last snapshot (no Redis round trip; may be stale)."""
        return self.owner_among(key, self._servers)

    @staticmethod
    def owner_among(key: str | bytes, servers: dict[str, str]) -> tuple[str, str] | None:
        server_id = rendezvous_owner(key, servers)
        return None if server_id is None else (server_id, servers[server_id])

    def stop(self) -> None:
        """Ask `run` to deregister and return."""
        self._stop.set()

    def crash(self) -> None:
        """For tests: stop heartbeating and skip deregistration, as if the process died.

        The entry stays in Redis until its ttl runs out. Queries keep working.
        """
        self._crashed = True

    # -- lifecycle ------------------------------------------------------------------------------
    async def __aenter__(self) -> ServerRegistry:
        if self._stack is not None:
            raise RuntimeError("this ServerRegistry is already entered")
        stack = AsyncExitStack()
        try:
            nursery = await stack.enter_async_context(trio.open_nursery())
            await nursery.start(self.run)
        except BaseException:
            with trio.CancelScope(shield=True):
                await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        self.stop()
        if stack is not None:
            # The body's exception is not fed to the nursery: it propagates as it is, not
            # wrapped in an exception group.
            await stack.aclose()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register, heartbeat until stopped or cancelled, then deregister (unless crashed).

        Deregistering is shielded from the cancellation and bounded by the ttl."""
        if self._running:
            raise RuntimeError("this ServerRegistry is already running")
        self._running = True
        self._stop = trio.Event()
        self._crashed = False
        client = RedisClient(self.redis_url, timeout=max(1.0, self.ttl))
        self._client = client
        try:
            await self._heartbeat_once()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeat_loop)
                task_status.started()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(max(1.0, self.ttl)):
                if not self._crashed:
                    await self._deregister()
            self._client = None
            await client.aclose()
            self._running = False
            self._registered = False

    # -- heartbeats -----------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        delay = self.heartbeat_interval
        while True:
            await trio.sleep(delay)
            if self._crashed:
                return
            if await self._heartbeat_once():
                delay = self.heartbeat_interval
            else:
                # Retry sooner than the interval: the entry is at risk of expiring.
                backoff = self._retry_initial * 2 ** min(self._failures - 1, 30)
                delay = min(self.heartbeat_interval, backoff)

    async def _heartbeat_once(self) -> bool:
        ttl_ms = max(1, round(self.ttl * 1000))
        try:
            flat = await self._script("heartbeat", self.server_id, self.address, ttl_ms)
        except Exception as exc:
            self._failures += 1
            if self._registered or self._failures == 1:
                log.warning(
                    "registry heartbeat of %s to %s failed (%r); retrying",
                    self.server_id,
                    self.redis_url,
                    exc,
                )
            else:
                log.debug("registry heartbeat failed again: %r", exc)
            self._registered = False
            return False
        if self._failures:
            log.warning("registry heartbeat of %s reaches Redis again", self.server_id)
        self._failures = 0
        previous = _text(flat[0])
        if previous and not self._registered and self._heartbeats == 0:
            log.warning(
                "server id %r was already registered (address %s): another process with the "
                "same id, or a restart within the ttl",
                self.server_id,
                previous,
            )
        self._servers = _pairs(list(flat[1:]))
        self._registered = True
        self._heartbeats += 1
        return True

    async def _deregister(self) -> None:
        try:
            await self._script("leave", self.server_id)
        except Exception as exc:
            log.warning(
                "could not deregister %s (%r); it expires after its ttl", self.server_id, exc
            )
        self._registered = False

    async def _script(self, name: str, *args: object) -> Any:
        client = self._client
        if client is None:
            raise RuntimeError("the ServerRegistry is not running")
        return await client.eval(_SCRIPTS[name], self._keys, list(args))

"""RedisSequencer: stream positions shared by every process of a deployment.

One Redis hash per stream holds ``epoch``, ``offset`` and ``ts``. A Lua script increments the
offset and takes the write timestamp from Redis's own clock (``max(TIME, last + 1)``), so
offsets and timestamps grow together whatever the writers' clocks say: Cassandra's
last-write-wins order, the change stream's order and the positions clients hold all agree.

When the hash is missing (first use, or Redis lost its data) the sequencer reads the stream
store's head and seeds the hash from it, `reseed_gap` offsets further on: writes allocated from
the lost state may still be in flight, and must not be given the same offsets again. Readers
see the gap as holes that time out (`StreamCursor`). A stream with no head starts a new epoch.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from .._core.checks import int_problem, require
from .._engine.streams import Allocation, Sequencer, StreamPosition, new_epoch
from ._client import RedisClient
from ._resp import Script, require_url

__all__ = ["RedisSequencer"]

log = logging.getLogger("trio_rt.streams")

_NEXT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('HGET', KEYS[1], 'ts'))
local ts = now
if last + 1 > ts then ts = last + 1 end
redis.call('HSET', KEYS[1], 'ts', string.format('%d', ts))
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
return {redis.call('HGET', KEYS[1], 'epoch'), offset, string.format('%d', ts)}
"""

_SEED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'offset', ARGV[2], 'ts', ARGV[3])
return 1
"""

_CURRENT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return {redis.call('HGET', KEYS[1], 'epoch'), redis.call('HGET', KEYS[1], 'offset')}
"""


_SCRIPTS = {
    "next": Script(_NEXT),
    "seed": Script(_SEED),
    "current": Script(_CURRENT),
}


class RedisSequencer(Sequencer):
    """Positions from Redis: one sequence per stream for the whole deployment.

    Run it while it is used: ``await nursery.start(sequencer.run)`` (components that own one,
    like `RoomHistory` and `ChangeStreamManager`, run it in the manager's nursery), or
    ``async with sequencer:``. `next` and `current` work from any task; each is one Lua call
    (EVALSHA) on a pipelined Trio-native connection, so concurrent writers share writes.
    They raise `RedisUnavailable` (trio_rt.redis) while Redis cannot be reached, and
    RuntimeError when the sequencer is not running.
    """

    def __init__(
        self, url: str, *, namespace: str = "trio_rt", reseed_gap: int = 1000, timeout: float = 5.0
    ) -> None:
        require_url(url)
        require(int_problem("reseed_gap", reseed_gap, at_least=0))
        self.url = url
        self.namespace = namespace
        self.reseed_gap = reseed_gap
        self._timeout = timeout
        self._client: RedisClient | None = None
        self._runners = 0
        self._nursery_cm: Any = None

    def _key(self, stream: str) -> str:
        return f"{self.namespace}:seq:{{{stream}}}"

    @property
    def running(self) -> bool:
        return self._client is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve `next`/`current` until cancelled. The connection is opened on first use (and
        again after a failure), and closed when the last of the tasks running this sequencer
        ends (one sequencer may serve a `RoomHistory` and a `ChangeStreamManager` at once)."""
        if self._client is None:
            self._client = RedisClient(self.url, timeout=self._timeout)
        self._runners += 1
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self._runners -= 1
            if not self._runners:
                client, self._client = self._client, None
                if client is not None:
                    await client.aclose()

    async def __aenter__(self) -> RedisSequencer:
        self._nursery_cm = trio.open_nursery()
        nursery = await self._nursery_cm.__aenter__()
        try:
            await nursery.start(self.run)
        except BaseException as exc:
            await self._nursery_cm.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._stop_scope = nursery.cancel_scope
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        self._stop_scope.cancel()
        return await self._nursery_cm.__aexit__(*exc)  # type: ignore[no-any-return]

    async def _script(self, name: str, stream: str, *args: object) -> Any:
        client = self._client
        if client is None:
            raise RuntimeError("RedisSequencer is not running")
        return await client.eval(_SCRIPTS[name], [self._key(stream)], list(args))

    async def _seed(self, stream: str) -> None:
        head = await self.store.head(stream) if self.store is not None else None
        if head is None:
            epoch, offset, ts = new_epoch(), 0, 0
        else:
            epoch = head.position.epoch
            offset = head.position.offset + self.reseed_gap
            ts = head.timestamp
        created = await self._script("seed", stream, epoch, offset, ts)
        if created and head is not None:
            log.warning(
                "sequence of stream %r was missing in Redis: continuing epoch %s at offset %d",
                stream,
                epoch,
                offset,
            )

    async def next(self, stream: str) -> Allocation:
        for _ in range(3):
            result = await self._script("next", stream)
            if result:
                epoch, offset, ts = result
                epoch = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
                return Allocation(StreamPosition(int(offset), epoch), int(ts))
            await self._seed(stream)
        raise RuntimeError(f"could not allocate a position in stream {stream!r}")

    async def current(self, stream: str) -> StreamPosition:
        for _ in range(3):
            result = await self._script("current", stream)
            if result:
                epoch, offset = result
                epoch = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
                return StreamPosition(int(offset), epoch)
            await self._seed(stream)
        raise RuntimeError(f"could not read the position of stream {stream!r}")

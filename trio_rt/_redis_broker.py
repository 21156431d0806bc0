"""RedisBroker: the Broker seam over Redis pub/sub (or Redis Cluster sharded pub/sub).

Data path, crossing the Trio/asyncio bridge once per direction:

- publish: the Trio caller delivers to this server's own subscribers at once (no Redis round
  trip, and local delivery keeps working while Redis is down), then puts the message on a
  bounded asyncio queue. One asyncio task drains the queue and pipelines PUBLISH commands.
- receive: one asyncio task reads the pub/sub connection and pushes messages into a bounded
  Trio channel; one Trio task takes them out and calls the manager's `deliver`. A server skips
  its own messages coming back from Redis (they were delivered locally already), so each
  member receives each message once.

Subscribe/unsubscribe commands travel through the same queue as publishes, so they keep their
order; `subscribe` returns once Redis has confirmed it.

Redis going away: the reader logs it, retries with exponential backoff, and on reconnect makes
the subscriptions on Redis match what the manager wants. Meanwhile local delivery goes on and
remote publishes are dropped (counted in `stats`): delivery is at most once, as in every
pub/sub; the history feature covers recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import trio
import trio_asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._aio import ensure_loop
from ._broker import Broker, Deliver
from ._options import require_positive_ints

__all__ = ["RedisBroker", "RedisBrokerStats"]

log = logging.getLogger("trio_rt.redis")
DELIVER_BATCH = 64  # messages fanned out per scheduler pass at most

_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
_SEP = b"\x00"  # between the publishing node's id and the data


@dataclass
class RedisBrokerStats:
    published: int = 0
    received: int = 0
    dropped_while_down: int = 0  # remote publishes dropped because Redis was unreachable
    reconnects: int = 0
    errors: int = 0


class RedisBroker(Broker):
    """Pub/sub across servers through Redis.

    `url` is a redis:// URL. With `cluster=True`, `url` names any node of a Redis Cluster and
    the broker uses sharded pub/sub (SSUBSCRIBE/SPUBLISH), so each channel lives on the shard
    that owns its hash slot instead of being broadcast to every node.

    Bounded buffers: `publish_queue_size` messages wait for Redis (when full, `publish` waits:
    backpressure on the broadcaster, never unbounded memory); `receive_buffer` messages wait
    for delivery (when full, the reader stops reading Redis; if that lasts, Redis's own
    client-output-buffer-limit for pub/sub disconnects us and we reconnect, and the reconnect is
    logged).
    """

    needs_asyncio = True

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        cluster: bool = False,
        node_id: str | None = None,
        publish_queue_size: int = 10_000,
        receive_buffer: int = 10_000,
        batch_size: int = 512,
        reconnect_initial: float = 0.1,
        reconnect_max: float = 5.0,
        subscribe_timeout: float = 10.0,
    ) -> None:
        require_positive_ints(
            publish_queue_size=publish_queue_size,
            receive_buffer=receive_buffer,
            batch_size=batch_size,
        )
        if not (0 < reconnect_initial <= reconnect_max):
            raise ValueError("need 0 < reconnect_initial <= reconnect_max")
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"not a Redis URL: {url!r}")
        self.url = url
        self.cluster = cluster
        self.node_id = node_id or uuid.uuid4().hex
        if _SEP.decode() in self.node_id:
            raise ValueError("node_id must not contain NUL")
        self._prefix = self.node_id.encode() + _SEP
        self._publish_queue_size = publish_queue_size
        self._receive_buffer = receive_buffer
        self._batch_size = batch_size
        self._reconnect_initial = reconnect_initial
        self._reconnect_max = reconnect_max
        self._subscribe_timeout = subscribe_timeout
        self._cluster_poll = 0.005
        self._idle_poll = 0.25
        self._channels: set[str] = set()
        self._confirmations: dict[str, trio.Event] = {}
        self._deliver: Deliver | None = None
        self._queue: asyncio.Queue[tuple[str, Any]] | None = None
        self._incoming: trio.MemorySendChannel[tuple[str, bytes]] | None = None
        self._pubsub: Any = None
        self._client: Any = None
        self._connected = False
        self._stopping = False
        self._aio_running = 2  # the read and write loops
        self._aio_stopped = trio.Event()
        self.stats = RedisBrokerStats()

    @property
    def channels(self) -> frozenset[str]:
        return frozenset(self._channels)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def backlog(self) -> int:
        """Publishes waiting for Redis plus received messages waiting for delivery."""
        waiting = self._queue.qsize() if self._queue is not None else 0
        if self._incoming is not None:
            waiting += self._incoming.statistics().current_buffer_used
        return waiting

    # -- lifecycle ------------------------------------------------------------------------------
    async def run(
        self, deliver: Deliver, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        if self._deliver is not None:
            raise RuntimeError("this RedisBroker is already running")
        self._deliver = deliver
        self._stopping = False
        self._aio_running = 2
        self._aio_stopped = trio.Event()
        send, receive = trio.open_memory_channel[tuple[str, bytes]](self._receive_buffer)
        self._incoming = send
        try:
            async with ensure_loop():
                self._queue = asyncio.Queue(self._publish_queue_size)
                client, pubsub = await trio_asyncio.aio_as_trio(self._open)()
                self._client, self._pubsub = client, pubsub
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._deliver_loop, receive)
                        nursery.start_soon(self._aio_task, self._read_loop)
                        nursery.start_soon(self._aio_task, self._write_loop)
                        task_status.started()
                        try:
                            await trio.sleep_forever()
                        finally:
                            # Stop the asyncio loops by asking, not by cancelling them: a
                            # cancellation can get lost inside redis-py (observed with cluster
                            # pub/sub), and then the nursery would wait forever.
                            with trio.CancelScope(shield=True):
                                with trio.move_on_after(5):
                                    await self._stop_aio_tasks()
                                nursery.cancel_scope.cancel()
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(5):
                        await trio_asyncio.aio_as_trio(self._close)(client, pubsub)
        finally:
            self._deliver = None
            self._incoming = None
            self._queue = None
            self._channels.clear()
            self._connected = False

    async def _aio_task(self, fn: Callable[[], Awaitable[None]]) -> None:
        try:
            await trio_asyncio.aio_as_trio(fn)()
        finally:
            self._aio_running -= 1
            if not self._aio_running:
                self._aio_stopped.set()

    async def _stop_aio_tasks(self) -> None:
        self._stopping = True
        if self._queue is not None:
            # When the queue is full the writer sees the flag after its current batch.
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(("stop", None))
        await self._aio_stopped.wait()

    @property
    def _node_channel(self) -> str:
        return f"trio_rt:node:{self.node_id}"

    async def _open(self) -> tuple[Any, Any]:
        client: Any
        if self.cluster:
            client = aioredis.RedisCluster.from_url(self.url)
            await client.initialize()
        else:
            client = aioredis.Redis.from_url(self.url)
            await client.ping()
        pubsub = client.pubsub()
        # The node's own channel: the pub/sub connection exists before the reader starts, and
        # later a place for messages addressed to this server alone.
        await (pubsub.ssubscribe if self.cluster else pubsub.subscribe)(self._node_channel)
        self._connected = True
        return client, pubsub

    @staticmethod
    async def _close(client: Any, pubsub: Any) -> None:
        for closer in (pubsub.aclose, client.aclose):
            try:
                await closer()
            except Exception:  # closing a dead connection: nothing left to do
                log.debug("error while closing redis", exc_info=True)

    # -- Broker API (Trio side) -----------------------------------------------------------------
    async def publish(self, channel: str, data: bytes) -> None:
        if self._deliver is None or self._queue is None:
            raise RuntimeError("RedisBroker.publish() called before run() started")
        if channel in self._channels:
            self._deliver(channel, data)  # this server's subscribers, without a round trip
        if not self._connected:
            self.stats.dropped_while_down += 1
            await trio.lowlevel.checkpoint()
            return
        item = ("pub", (channel, self._prefix + data))
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            await trio_asyncio.aio_as_trio(self._queue.put)(item)  # backpressure
        else:
            await trio.lowlevel.checkpoint()

    async def subscribe(self, channel: str) -> None:
        if self._queue is None:
            raise RuntimeError("RedisBroker.subscribe() called before run() started")
        if channel in self._channels:
            await trio.lowlevel.checkpoint()
            return
        self._channels.add(channel)
        if not self._connected:
            # Resubscribed when Redis is back; local delivery works meanwhile.
            await trio.lowlevel.checkpoint()
            return
        done = self._confirmations.setdefault(channel, trio.Event())
        self._queue.put_nowait(("sub", channel))
        with trio.move_on_after(self._subscribe_timeout):
            await done.wait()
        if not done.is_set():
            log.warning("redis did not confirm the subscription to %s in time", channel)

    def unsubscribe(self, channel: str) -> None:
        if channel not in self._channels:
            return
        self._channels.discard(channel)
        if self._queue is not None and self._connected:
            try:
                self._queue.put_nowait(("unsub", channel))
            except asyncio.QueueFull:  # reconciled at the next reconnect instead
                log.debug("publish queue full; unsubscribe from %s deferred", channel)

    # -- Trio side of the receive path ----------------------------------------------------------
    async def _deliver_loop(self, receive: trio.MemoryReceiveChannel[tuple[str, bytes]]) -> None:
        async with receive:
            async for channel, data in receive:
                self._deliver_one(channel, data)
                # Then what is already received (up to DELIVER_BATCH), without a checkpoint
                # each: a burst from another server is fanned out in one scheduler pass, so
                # its frames to each client are corked into one write; the bound keeps one
                # pass short.
                for _ in range(DELIVER_BATCH - 1):
                    try:
                        channel, data = receive.receive_nowait()
                    except trio.WouldBlock:
                        break
                    self._deliver_one(channel, data)

    def _deliver_one(self, channel: str, data: bytes) -> None:
        if channel in self._channels and self._deliver is not None:
            try:
                self._deliver(channel, data)
            except Exception:
                self.stats.errors += 1
                log.exception("delivery of a message on %s failed", channel)

    # -- asyncio side ---------------------------------------------------------------------------
    def _sub(self, pubsub: Any) -> Callable[..., Awaitable[Any]]:
        return pubsub.ssubscribe if self.cluster else pubsub.subscribe  # type: ignore[no-any-return]

    def _unsub(self, pubsub: Any) -> Callable[..., Awaitable[Any]]:
        return pubsub.sunsubscribe if self.cluster else pubsub.unsubscribe  # type: ignore[no-any-return]

    async def _write_loop(self) -> None:
        assert self._queue is not None
        queue, client, pubsub = self._queue, self._client, self._pubsub
        while not self._stopping:
            batch = [await queue.get()]
            while len(batch) < self._batch_size and not queue.empty():
                batch.append(queue.get_nowait())
            pipe: Any = None
            for op, arg in batch:
                if op == "stop":
                    continue
                try:
                    if op == "pub":
                        if pipe is None:
                            pipe = client.pipeline(transaction=False)
                        if self.cluster:
                            pipe.spublish(*arg)
                        else:
                            pipe.publish(*arg)
                        continue
                    if pipe is not None:  # keep publishes and (un)subscribes in order
                        await pipe.execute()
                        self.stats.published += len(pipe)
                        pipe = None
                    if op == "sub":
                        await self._sub(pubsub)(arg)
                    else:
                        await self._unsub(pubsub)(arg)
                except _DOWN:
                    _reraise_if_cancelled()
                    self._write_failed(len(pipe) if pipe is not None else 0)
                    pipe = None
                except Exception:
                    # RedisError, and the AttributeError redis-py raises when a command races
                    # a reconnect: never let the writer die; the reader resynchronizes.
                    self.stats.errors += 1
                    log.warning("redis command %s failed", op, exc_info=True)
                    pipe = None
            if pipe is not None:
                try:
                    await pipe.execute()
                    self.stats.published += len(pipe)
                except _DOWN:
                    _reraise_if_cancelled()
                    self._write_failed(len(pipe))
                except Exception:
                    self.stats.errors += 1
                    log.warning("redis publish failed", exc_info=True)

    def _write_failed(self, dropped: int) -> None:
        # The reader alone decides whether Redis is up (it sees every disconnect); a failed
        # write loses its batch (at most once) and the pool replaces the broken connection.
        self.stats.dropped_while_down += dropped
        log.warning("redis write failed; %d message(s) dropped", dropped)

    def _lost_connection(self, dropped: int) -> None:
        self.stats.dropped_while_down += dropped
        if self._connected:
            self._connected = False
            log.warning("lost the connection to redis at %s; retrying", self.url)

    async def _read_loop(self) -> None:
        pubsub = self._pubsub
        incoming = self._incoming
        assert incoming is not None
        delay = self._reconnect_initial
        was_down = False
        while not self._stopping:
            # redis-py's cluster polling can swallow a cancellation and return None: check.
            _reraise_if_cancelled()
            try:
                if self.cluster:
                    # Several shard connections: redis-py polls them in turn.
                    try:
                        message = await pubsub.get_sharded_message(timeout=self._cluster_poll)
                    except RuntimeError:
                        # redis-py: a shard connection being set up or torn down by a
                        # concurrent (un)subscribe ("pubsub connection not set"). Next round.
                        _reraise_if_cancelled()
                        await asyncio.sleep(self._cluster_poll)
                        continue
                else:
                    # A bounded wait, so that the loop sees _stopping when idle.
                    message = await pubsub.get_message(timeout=self._idle_poll)
            except _DOWN as exc:
                _reraise_if_cancelled()
                self._lost_connection(0)
                was_down = True
                log.debug("redis read failed: %r; retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(self._reconnect_max, delay * 2)
                continue
            delay = self._reconnect_initial
            if was_down:
                was_down = False
                self._connected = True
                self.stats.reconnects += 1
                log.warning("reconnected to redis at %s", self.url)
                await self._reconcile(pubsub)
            if message is None:
                continue
            kind = message.get("type")
            if isinstance(kind, bytes):
                kind = kind.decode()
            channel = message.get("channel")
            if isinstance(channel, bytes):
                channel = channel.decode()
            if kind in ("message", "smessage"):
                origin, sep, data = message["data"].partition(_SEP)
                if not sep or origin == self._prefix[:-1]:
                    continue  # not ours to read, or ours: delivered locally at publish time
                self.stats.received += 1
                try:
                    incoming.send_nowait((channel, data))
                except trio.WouldBlock:
                    await trio_asyncio.trio_as_aio(incoming.send)((channel, data))
            elif kind in ("subscribe", "ssubscribe"):
                event = self._confirmations.pop(channel, None)
                if event is not None:
                    event.set()

    async def _reconcile(self, pubsub: Any) -> None:
        """After a reconnect, make Redis's subscriptions match the wanted ones."""
        have = {
            c.decode() if isinstance(c, bytes) else c
            for c in (pubsub.shard_channels if self.cluster else pubsub.channels)
        }
        want = set(self._channels) | {self._node_channel}
        try:
            for channel in sorted(want - have):
                await self._sub(pubsub)(channel)
            for channel in sorted(have - want):
                await self._unsub(pubsub)(channel)
        except _DOWN:
            self._lost_connection(0)


def _reraise_if_cancelled() -> None:
    """redis-py may turn a cancellation of its read into a connection error; a loop that
    retries on connection errors would then never end. Put the cancellation back."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError

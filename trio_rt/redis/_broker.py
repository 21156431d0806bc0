"""RedisBroker: the Broker seam over Redis pub/sub (or Redis Cluster sharded pub/sub).

Data path, crossing the Trio/asyncio bridge once per direction:

- publish: the Trio caller delivers to this server's own subscribers at once (no Redis round
  trip, and local delivery keeps working while Redis is down), then puts the message on a
  bounded asyncio queue and waits until Redis has replied to its PUBLISH. One asyncio task
  drains the queue, pipelines the PUBLISH commands of what is queued, and wakes each waiting
  publisher with Redis's answer. A publish not confirmed within `publish_timeout` (Redis down
  longer than that, or the pipeline failed) raises `BrokerUnavailable`: nothing is counted as
  published that Redis did not confirm.
- receive: one asyncio task reads the pub/sub connection and pushes messages into a bounded
  Trio channel; one Trio task takes them out and calls the manager's `deliver`. A server skips
  its own messages coming back from Redis (they were delivered locally already), so each
  member receives each message once.

Subscribe/unsubscribe commands travel through the same queue as publishes, so they keep their
order; `subscribe` returns once Redis has confirmed it.

Redis going away: the reader notices (it sees every (re)connect of the pub/sub connection,
including redis-py's own), retries with exponential backoff, and on reconnect makes the
subscriptions on Redis match what the manager wants. Once Redis has processed them (a PING
sent after them comes back) the broker calls its `on_resubscribed` listeners, in order with
the messages it delivers: what was published during the break never reaches this server
through pub/sub, and the manager re-reads it from the rooms' history store. Meanwhile local
delivery goes on and publishes wait for Redis (bounded by `publish_timeout`) instead of
failing at once. The writer sends nothing while the reader knows Redis is down, and drops
the pooled connections that predate a reconnect, so the first pipeline after a restart does
not go to a dead socket. A pipeline that fails is not retried (its PUBLISHes may have
reached Redis): its publishers get `BrokerUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import trio
import trio_asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._broker import Broker, BrokerUnavailable, Deliver
from .._checks import require_positive_ints, require_positive_numbers
from ._aio import ensure_loop

__all__ = ["RedisBroker", "RedisBrokerStats"]

log = logging.getLogger("trio_rt.redis")
DELIVER_BATCH = 64  # messages fanned out per scheduler pass at most

_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
_SEP = b"\x00"  # between the publishing node's id and the data
_RESYNC = b"trio_rt:resubscribed"  # the PING payload that marks resubscriptions as effective
_RESUBSCRIBED = object()  # in the receive channel: call the on_resubscribed listeners here


@dataclass
class RedisBrokerStats:
    published: int = 0  # PUBLISHes Redis confirmed
    received: int = 0
    failed: int = 0  # publishes that raised BrokerUnavailable (Redis down, pipeline failed)
    reconnects: int = 0
    resubscribed: int = 0  # breaks in the subscriptions announced to on_resubscribed
    errors: int = 0

    @property
    def dropped_while_down(self) -> int:
        """Deprecated alias of `failed` (publishes are no longer dropped silently)."""
        warnings.warn(
            "RedisBrokerStats.dropped_while_down is deprecated; use `failed`",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.failed


class _Publish:
    """One publish waiting for Redis: the Trio caller waits on `done`; the writer sets it,
    with `error` when Redis did not confirm it. `abandoned`: the caller stopped waiting (it
    raised BrokerUnavailable or was cancelled), so the writer does not send it."""

    __slots__ = ("abandoned", "channel", "data", "deadline", "done", "error")

    def __init__(self, channel: str, data: bytes, deadline: float) -> None:
        self.channel = channel
        self.data = data
        self.deadline = deadline
        self.done = trio.Event()
        self.error: BaseException | None = None
        self.abandoned = False

    def finish(self, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


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

    `publish` returns once Redis confirmed the PUBLISH, and raises `BrokerUnavailable` when
    that does not happen within `publish_timeout` seconds (it waits while Redis reconnects).
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
        publish_timeout: float = 5.0,
    ) -> None:
        require_positive_ints(
            publish_queue_size=publish_queue_size,
            receive_buffer=receive_buffer,
            batch_size=batch_size,
        )
        require_positive_numbers(
            reconnect_initial=reconnect_initial,
            reconnect_max=reconnect_max,
            publish_timeout=publish_timeout,
        )
        if reconnect_initial > reconnect_max:
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
        self.publish_timeout = float(publish_timeout)
        self._cluster_poll = 0.005
        self._idle_poll = 0.25
        self._channels: set[str] = set()
        self._confirmations: dict[str, trio.Event] = {}
        self._deliver: Deliver | None = None
        self._queue: asyncio.Queue[tuple[str, Any]] | None = None
        self._incoming: trio.MemorySendChannel[tuple[str, bytes] | object] | None = None
        self._pubsub: Any = None
        self._client: Any = None
        self._connected = False
        self._up: asyncio.Event | None = None  # set while the reader has a connection
        self._generation = 0  # pub/sub reconnections so far: the writer's pool follows it
        self._pool_generation = 0
        self._reconnected = False  # set by the pub/sub connection's connect callback
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
        send, receive = trio.open_memory_channel[tuple[str, bytes] | object](self._receive_buffer)
        self._incoming = send
        try:
            async with ensure_loop():
                self._queue = asyncio.Queue(self._publish_queue_size)
                self._up = asyncio.Event()
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
            self._fail_queued(BrokerUnavailable("the broker stopped"))
            self._deliver = None
            self._incoming = None
            self._queue = None
            self._up = None
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

    def _fail_queued(self, error: BaseException) -> None:
        """Publishes still queued when the broker stops are answered, not left waiting."""
        queue = self._queue
        while queue is not None and not queue.empty():
            op, arg = queue.get_nowait()
            if op == "pub":
                arg.finish(error)

    @property
    def _node_channel(self) -> str:
        return f"trio_rt:node:{self.node_id}"

    async def _open(self) -> tuple[Any, Any]:
        client: Any
        if self.cluster:
            client = aioredis.RedisCluster.from_url(self.url)
            await client.initialize()
        else:
            # No retries inside redis-py: a failed command surfaces at once (the reader
            # reconnects with its own backoff; a failed pipeline is never re-sent, since its
            # PUBLISHes may have reached Redis).
            client = aioredis.Redis.from_url(self.url, retry=Retry(NoBackoff(), 0))
            await client.ping()
        pubsub = client.pubsub()
        # The node's own channel: the pub/sub connection exists before the reader starts, and
        # later a place for messages addressed to this server alone.
        await (pubsub.ssubscribe if self.cluster else pubsub.subscribe)(self._node_channel)
        if not self.cluster:
            # Every later (re)connect of the pub/sub connection, redis-py's silent ones
            # included, is a break in the subscriptions.
            pubsub.connection.register_connect_callback(self._pubsub_connected)
        self._connected = True
        assert self._up is not None
        self._up.set()
        return client, pubsub

    def _pubsub_connected(self, connection: Any) -> None:
        self._reconnected = True

    @staticmethod
    async def _close(client: Any, pubsub: Any) -> None:
        for closer in (pubsub.aclose, client.aclose):
            try:
                await closer()
            except Exception:  # closing a dead connection: nothing left to do
                log.debug("error while closing redis", exc_info=True)

    # -- Broker API (Trio side) -----------------------------------------------------------------
    async def publish(self, channel: str, data: bytes) -> None:
        """Deliver to this server's subscribers at once, then return once Redis confirmed
        the PUBLISH. Raises `BrokerUnavailable` when Redis did not within `publish_timeout`
        (this server's subscribers got the message; other servers may or may not have)."""
        if self._deliver is None or self._queue is None:
            raise RuntimeError("RedisBroker.publish() called before run() started")
        if channel in self._channels:
            self._deliver(channel, data)  # this server's subscribers, without a round trip
        item = _Publish(channel, self._prefix + data, trio.current_time() + self.publish_timeout)
        try:
            with trio.move_on_at(item.deadline):
                try:
                    self._queue.put_nowait(("pub", item))
                except asyncio.QueueFull:
                    await trio_asyncio.aio_as_trio(self._queue.put)(("pub", item))  # backpressure
                await item.done.wait()
        finally:
            if not item.done.is_set():
                item.abandoned = True  # not sent if the writer has not taken it yet
        if not item.done.is_set():
            self.stats.failed += 1
            raise BrokerUnavailable(
                f"redis did not confirm the publish on {channel!r} within {self.publish_timeout:g}s"
            )
        if item.error is not None:
            self.stats.failed += 1
            raise BrokerUnavailable(f"redis publish on {channel!r} failed: {item.error!r}")

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
    async def _deliver_loop(
        self, receive: trio.MemoryReceiveChannel[tuple[str, bytes] | object]
    ) -> None:
        async with receive:
            async for item in receive:
                self._deliver_one(item)
                # Then what is already received (up to DELIVER_BATCH), without a checkpoint
                # each: a burst from another server is fanned out in one scheduler pass, so
                # its frames to each client are corked into one write; the bound keeps one
                # pass short.
                for _ in range(DELIVER_BATCH - 1):
                    try:
                        item = receive.receive_nowait()
                    except trio.WouldBlock:
                        break
                    self._deliver_one(item)

    def _deliver_one(self, item: tuple[str, bytes] | object) -> None:
        if item is _RESUBSCRIBED:
            self.stats.resubscribed += 1
            try:
                self._resubscribed()
            except Exception:
                self.stats.errors += 1
                log.exception("an on_resubscribed listener failed")
            return
        assert isinstance(item, tuple)
        channel, data = item
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
        queue, pubsub = self._queue, self._pubsub
        while not self._stopping:
            batch = [await queue.get()]
            while len(batch) < self._batch_size and not queue.empty():
                batch.append(queue.get_nowait())
            pubs: list[_Publish] = []
            for op, arg in batch:
                if op == "pub":
                    pubs.append(arg)
                    continue
                if pubs:  # keep publishes and (un)subscribes in order
                    await self._publish_batch(pubs)
                    pubs = []
                if op == "stop":
                    continue
                try:
                    if op == "sub":
                        await self._sub(pubsub)(arg)
                    else:
                        await self._unsub(pubsub)(arg)
                except _DOWN:
                    _reraise_if_cancelled()
                    # The reader reconciles the subscriptions once Redis is back.
                    log.debug("redis %s of %s failed; reconciled on reconnect", op, arg)
                except Exception:
                    # RedisError, and the AttributeError redis-py raises when a command races
                    # a reconnect: never let the writer die; the reader resynchronizes.
                    self.stats.errors += 1
                    log.warning("redis command %s failed", op, exc_info=True)
            if pubs:
                await self._publish_batch(pubs)

    async def _publish_batch(self, pubs: list[_Publish]) -> None:
        """PUBLISH `pubs` in one pipeline and answer each publisher. While the reader knows
        Redis is down, wait for it (each publish until its deadline) rather than fail."""
        up = self._up
        assert up is not None
        live = self._still_waiting(pubs)
        while live and not up.is_set() and not self._stopping:
            wait = min(p.deadline for p in live) - trio.current_time()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(up.wait(), max(0.0, min(wait, self._idle_poll)))
            live = self._still_waiting(live)
        if not live:
            return
        if self._stopping:
            for p in live:
                p.finish(BrokerUnavailable("the broker stopped"))
            return
        client = self._client
        if self._pool_generation != self._generation and not self.cluster:
            # Pooled connections opened before Redis went away point at a dead server.
            self._pool_generation = self._generation
            with contextlib.suppress(Exception):
                await client.connection_pool.disconnect(inuse_connections=False)
        pipe = client.pipeline(transaction=False)
        for p in live:
            if self.cluster:
                pipe.spublish(p.channel, p.data)
            else:
                pipe.publish(p.channel, p.data)
        try:
            await pipe.execute()
        except _DOWN as exc:
            _reraise_if_cancelled()
            self._publish_failed(live, exc)
            return
        except Exception as exc:
            self.stats.errors += 1
            self._publish_failed(live, exc)
            return
        self.stats.published += len(live)
        for p in live:
            p.finish()

    def _still_waiting(self, pubs: list[_Publish]) -> list[_Publish]:
        """`pubs` whose publisher still waits; those past their deadline are answered."""
        now = trio.current_time()
        live: list[_Publish] = []
        for p in pubs:
            if p.abandoned or p.done.is_set():
                continue
            if now >= p.deadline:
                p.finish(BrokerUnavailable("redis unreachable"))
                continue
            live.append(p)
        return live

    def _publish_failed(self, pubs: list[_Publish], exc: BaseException) -> None:
        # Not re-sent: some of these PUBLISHes may have reached Redis before the failure.
        log.warning("redis publish failed; %d publisher(s) told: %r", len(pubs), exc)
        for p in pubs:
            p.finish(exc)

    def _lost_connection(self) -> None:
        if self._up is not None:
            self._up.clear()
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
            if self._reconnected or (was_down and self.cluster):
                # The pub/sub connection is new: resubscribe, then (once Redis has processed
                # that) tell the listeners that messages may have been missed.
                self._reconnected = False
                was_down = False
                self._generation += 1
                self._connected = True
                assert self._up is not None
                self._up.set()
                self.stats.reconnects += 1
                log.warning("reconnected to redis at %s", self.url)
                if await self._reconcile(pubsub):
                    if self.cluster:
                        await self._send_incoming(incoming, _RESUBSCRIBED)
                    else:
                        try:
                            await pubsub.ping(_RESYNC)
                        except _DOWN:
                            _reraise_if_cancelled()
                            self._lost_connection()
                continue
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
                self._lost_connection()
                was_down = True
                log.debug("redis read failed: %r; retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(self._reconnect_max, delay * 2)
                continue
            delay = self._reconnect_initial
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
                await self._send_incoming(incoming, (channel, data))
            elif kind in ("subscribe", "ssubscribe"):
                event = self._confirmations.pop(channel, None)
                if event is not None:
                    event.set()
            elif kind == "pong" and message.get("data") == _RESYNC:
                # Every subscription sent before the PING is in effect.
                await self._send_incoming(incoming, _RESUBSCRIBED)

    async def _send_incoming(
        self, incoming: trio.MemorySendChannel[tuple[str, bytes] | object], item: object
    ) -> None:
        try:
            incoming.send_nowait(item)
        except trio.WouldBlock:
            await trio_asyncio.trio_as_aio(incoming.send)(item)

    async def _reconcile(self, pubsub: Any) -> bool:
        """After a reconnect, make Redis's subscriptions match the wanted ones. False when
        Redis went away again meanwhile."""
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
            _reraise_if_cancelled()
            self._lost_connection()
            return False
        return True


def _reraise_if_cancelled() -> None:
    """redis-py may turn a cancellation of its read into a connection error; a loop that
    retries on connection errors would then never end. Put the cancellation back."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError

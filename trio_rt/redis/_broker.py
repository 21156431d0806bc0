"""RedisBroker: the Broker seam over Redis pub/sub (or Redis Cluster sharded pub/sub), in Trio.

No asyncio anywhere: Trio-native connections (``_connection.py``) over Trio sockets, RESP parsed
by hiredis's C reader.

- publish: the caller delivers to this server's own subscribers at once (no Redis round trip,
  and local delivery keeps working while Redis is down), then sends ``PUBLISH`` (``SPUBLISH``
  to the channel's shard on a cluster) on the pipelined command connection and waits for
  Redis's reply. Publishers of one scheduler pass share one write; the write leaves in the
  next pass whatever else the server is doing. A publish not confirmed within
  `publish_timeout` (Redis down longer than that, or the connection failed after the command
  was written) raises `BrokerUnavailable`: nothing is counted as published that Redis did not
  confirm. While the subscriber knows Redis is down, publishes wait for it (each until its
  deadline); a command that certainly never reached Redis (the connection could not be opened,
  or was found closed before the write) is tried again until then, one that may have reached
  Redis is never re-sent.
- receive: one task per subscriber connection reads it, parses every message of a socket read
  and calls the manager's `deliver` right there (no queue, no task switch per message), at
  most `DELIVER_BATCH` messages per scheduler pass: a burst from another server is fanned out
  in a few passes, so its frames to each client are corked into few writes. A server skips
  its own messages coming back from Redis (they were delivered locally already), so each
  member receives each message once. The bound on what waits is the socket and Redis's own
  ``client-output-buffer-limit`` for pub/sub: a receiver that falls too far behind is
  disconnected by Redis, and reconnects (logged, announced like any break).

Subscriptions: standalone, one connection holds them all; on a cluster, one connection per
master that owns a subscribed channel's slot (a "shard" here), opened on demand. `subscribe`
returns once Redis confirmed it. When a connection breaks, its task reconnects with
exponential backoff (`reconnect_initial` .. `reconnect_max`), subscribes what is wanted there
again, and sends a ``PING``; once its pong is back (every subscription before it is in effect)
the broker calls its `on_resubscribed` listeners, in order with the messages it delivers:
what was published during the break never reaches this server through pub/sub, and the
manager re-reads it from the rooms' history store. On a cluster a broken shard first reloads
the slot map, and channels whose slot moved are subscribed on their new master (announced the
same way); so are channels Redis unsubscribes by itself (a slot migrated) and a ``MOVED``
answer to ``SSUBSCRIBE``.
"""

from __future__ import annotations

import collections
import logging
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

import trio

from .._core.checks import require_positive_ints, require_positive_numbers
from .._engine.broker import Broker, BrokerUnavailable, Deliver
from ._client import RedisClient, RedisClusterClient
from ._connection import PubSubConnection
from ._resp import (
    Node,
    RedisAddress,
    RedisError,
    RedisReplyError,
    RedisUnavailable,
    parse_url,
    require_url,
)

__all__ = ["RedisBroker", "RedisBrokerStats"]

log = logging.getLogger("trio_rt.redis")
DELIVER_BATCH = 64  # messages fanned out per scheduler pass at most

IO_TIMEOUT = 5.0  # connecting, and each write, on the subscriber connections
_SEP = b"\x00"  # between the publishing node's id and the data
_RESYNC = b"trio_rt:resubscribed"  # the PING payload that marks resubscriptions as effective
_MESSAGE = (b"message", b"smessage")
_SUBSCRIBED = (b"subscribe", b"ssubscribe")
_UNSUBSCRIBED = (b"unsubscribe", b"sunsubscribe")
_UNSET: Any = object()


@dataclass
class RedisBrokerStats:
    published: int = 0  # PUBLISHes Redis confirmed
    received: int = 0
    failed: int = 0  # publishes that raised BrokerUnavailable (Redis down, connection failed)
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


class _Shard:
    """The subscriptions held on one Redis server: all of them standalone, one master's share
    on a cluster. Its task (`RedisBroker._run_shard`) keeps `connection` open."""

    def __init__(self, node: Node | None, address: RedisAddress) -> None:
        self.node = node
        self.address = address
        self.channels: set[str] = set()  # wanted on this server
        self.connection: PubSubConnection | None = None  # open and subscribed
        self.started = False  # its task runs
        self.connecting = True  # its first connection is being opened
        self.unsubscribing: collections.Counter[str] = collections.Counter()
        self.pings = 0  # PINGs sent on the current connection
        self.pongs = 0
        self.announce_at: int | None = None  # call on_resubscribed once this pong is back

    def send_subscribe(self, channel: str, cluster: bool) -> None:
        assert self.connection is not None
        self.connection.send_nowait("SSUBSCRIBE" if cluster else "SUBSCRIBE", channel)

    def send_ping(self, announce: bool) -> None:
        """A PING after what was sent: its pong says all of it is in effect."""
        assert self.connection is not None
        self.connection.send_nowait("PING", _RESYNC)
        self.pings += 1
        if announce:
            self.announce_at = self.pings


class RedisBroker(Broker):
    """Pub/sub across servers through Redis.

    `url` is a ``redis://`` (``rediss://`` for TLS, ``unix://``) URL. With `cluster=True`,
    `url` names any node of a Redis Cluster and the broker uses sharded pub/sub
    (SSUBSCRIBE/SPUBLISH), so each channel lives on the shard that owns its hash slot instead
    of being broadcast to every node.

    `publish` returns once Redis confirmed the PUBLISH, and raises `BrokerUnavailable` when
    that does not happen within `publish_timeout` seconds (it waits while Redis reconnects).
    At most `publish_queue_size` publishes wait for Redis's reply; further publishers wait
    for room (backpressure on the broadcaster, never unbounded memory).

    `receive_buffer` and `batch_size` are deprecated and ignored: received messages are
    delivered as they are parsed (the socket and Redis's pub/sub output-buffer limit bound
    what waits), and every pending command goes out in one write.
    """

    spans_processes = True

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        cluster: bool = False,
        node_id: str | None = None,
        publish_queue_size: int = 10_000,
        receive_buffer: int = _UNSET,
        batch_size: int = _UNSET,
        reconnect_initial: float = 0.1,
        reconnect_max: float = 5.0,
        subscribe_timeout: float = 10.0,
        publish_timeout: float = 5.0,
    ) -> None:
        deprecated = {
            name: value
            for name, value in (("receive_buffer", receive_buffer), ("batch_size", batch_size))
            if value is not _UNSET
        }
        require_positive_ints(publish_queue_size=publish_queue_size, **deprecated)
        require_positive_numbers(
            reconnect_initial=reconnect_initial,
            reconnect_max=reconnect_max,
            publish_timeout=publish_timeout,
        )
        if reconnect_initial > reconnect_max:
            raise ValueError("need 0 < reconnect_initial <= reconnect_max")
        require_url(url)
        for name in deprecated:
            warnings.warn(
                f"RedisBroker({name}=...) is deprecated and ignored: messages are delivered as "
                "they are read, and pending commands go out in one write",
                DeprecationWarning,
                stacklevel=2,
            )
        self.url = url
        self.address = parse_url(url)
        self.cluster = cluster
        self.node_id = node_id or uuid.uuid4().hex
        if _SEP.decode() in self.node_id:
            raise ValueError("node_id must not contain NUL")
        self._origin = self.node_id.encode()
        self._prefix = self._origin + _SEP
        self._publish_queue_size = publish_queue_size
        self._reconnect_initial = reconnect_initial
        self._reconnect_max = reconnect_max
        self._subscribe_timeout = subscribe_timeout
        self.publish_timeout = float(publish_timeout)
        self._publish_command = "SPUBLISH" if cluster else "PUBLISH"
        self._channels: set[str] = set()
        self._confirmations: dict[str, trio.Event] = {}
        self._deliver: Deliver | None = None
        self._client: RedisClient | RedisClusterClient | None = None
        self._nursery: trio.Nursery | None = None
        self._shards: dict[Node | None, _Shard] = {}
        self._homes: dict[str, _Shard] = {}  # subscribed channel -> its shard
        self._up = trio.Event()  # set while every shard is connected
        self._connected = False
        self._stopping = False
        self._in_flight = 0  # publishes waiting for Redis
        self.stats = RedisBrokerStats()

    @property
    def channels(self) -> frozenset[str]:
        return frozenset(self._channels)

    @property
    def connected(self) -> bool:
        """Whether every subscriber connection is up."""
        return self._connected

    @property
    def backlog(self) -> int:
        """Publishes waiting for Redis's reply."""
        return self._in_flight

    @property
    def _node_channel(self) -> str:
        return f"trio_rt:node:{self.node_id}"

    # -- lifecycle ------------------------------------------------------------------------------
    async def run(
        self, deliver: Deliver, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, subscribe, and serve until cancelled; then close every connection.

        Raises `RedisUnavailable` (or the `RedisReplyError` of a refused login) when Redis
        cannot be reached at start; later breaks are retried for as long as it runs."""
        if self._deliver is not None:
            raise RuntimeError("this RedisBroker is already running")
        self._deliver = deliver
        self._stopping = False
        self._up = trio.Event()
        client: RedisClient | RedisClusterClient
        if self.cluster:
            client = RedisClusterClient(
                self.address,
                timeout=max(IO_TIMEOUT, self.publish_timeout),
                max_pending=self._publish_queue_size,
            )
        else:
            client = RedisClient(
                self.address,
                timeout=max(IO_TIMEOUT, self.publish_timeout),
                max_pending=self._publish_queue_size,
            )
        self._client = client
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if isinstance(client, RedisClusterClient):
                    await client.refresh()
                # The node's own channel: a subscriber connection from the start (and a place
                # for messages addressed to this server alone).
                shard = self._home(self._node_channel)
                shard.channels.add(self._node_channel)
                await nursery.start(self._run_shard, shard, True)
                task_status.started()
        finally:
            self._stopping = True
            self._up.set()  # publishers waiting for Redis: the broker stopped
            await client.aclose()
            for shard in self._shards.values():
                if shard.connection is not None:
                    shard.connection.close()
            for event in self._confirmations.values():
                event.set()
            self._confirmations.clear()
            self._shards.clear()
            self._homes.clear()
            self._channels.clear()
            self._nursery = None
            self._client = None
            self._deliver = None
            self._connected = False

    def _home(self, channel: str) -> _Shard:
        """The shard that holds `channel` (created, not started, when new)."""
        node: Node | None = None
        if isinstance(self._client, RedisClusterClient):
            node = self._client.cached_owner(channel)
        shard = self._shards.get(node)
        if shard is None:
            address = self.address if node is None else self.address.node(*node)
            shard = self._shards[node] = _Shard(node, address)
        self._homes[channel] = shard
        return shard

    def _start(self, shard: _Shard) -> None:
        if not shard.started and self._nursery is not None:
            shard.started = True
            self._nursery.start_soon(self._run_shard, shard, False)

    async def _run_shard(
        self,
        shard: _Shard,
        fail_first: bool,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep `shard`'s connection open and subscribed: reconnect with backoff, and read."""
        shard.started = True
        delay = self._reconnect_initial
        first = True
        while True:
            try:
                connection = await PubSubConnection.connect(shard.address, io_timeout=IO_TIMEOUT)
            except RedisError as exc:
                if first and fail_first:
                    raise
                if first:
                    shard.connecting = False
                    self._lost(shard, exc)
                log.debug("redis subscriber connect failed: %r; retrying in %.2fs", exc, delay)
                await trio.sleep(delay)
                delay = min(self._reconnect_max, delay * 2)
                continue
            # Synchronously from here: a channel added meanwhile is either in the snapshot
            # below or sees the connection and subscribes itself.
            shard.connection = connection
            shard.pings = shard.pongs = 0
            shard.unsubscribing.clear()
            for channel in sorted(shard.channels):
                shard.send_subscribe(channel, self.cluster)
            reconnected = not first or shard.announce_at is not None
            shard.send_ping(announce=reconnected)
            shard.connecting = False
            if not first:
                self.stats.reconnects += 1
                log.warning("reconnected to redis at %s", shard.address)
            self._update_up()
            delay = self._reconnect_initial
            if first:
                first = False
                task_status.started()
            try:
                await connection.flush()
                await self._read(shard, connection)
            except RedisUnavailable as exc:
                self._lost(shard, exc)
            finally:
                connection.close()
                if shard.connection is connection:
                    shard.connection = None
            if self.cluster:
                await self._rehome(shard)
            await trio.sleep(delay)
            delay = min(self._reconnect_max, delay * 2)

    def _lost(self, shard: _Shard, exc: BaseException) -> None:
        if shard.connection is not None:
            log.warning("lost the connection to redis at %s (%r); retrying", shard.address, exc)
        shard.connection = None
        shard.announce_at = 0  # whatever comes back must be announced
        self._update_up()
        # Subscribers waiting for a confirmation: they return; the channel is subscribed
        # again on reconnect (and the break announced).
        for channel in shard.channels:
            event = self._confirmations.pop(channel, None)
            if event is not None:
                event.set()

    def _update_up(self) -> None:
        up = all(s.connection is not None for s in self._shards.values() if s.channels)
        self._connected = up
        if up:
            self._up.set()
        elif self._up.is_set():
            self._up = trio.Event()

    async def _rehome(self, shard: _Shard) -> None:
        """After a cluster shard broke: reload the slot map; channels whose slot moved are
        subscribed on their new master (and the break announced there)."""
        client = self._client
        assert isinstance(client, RedisClusterClient)
        try:
            await client.refresh()
        except RedisError as exc:
            log.debug("cannot reload the cluster's slot map: %r", exc)
            return
        for channel in sorted(shard.channels):
            if client.cached_owner(channel) == shard.node:
                continue
            shard.channels.discard(channel)
            home = self._home(channel)
            home.channels.add(channel)
            if home.connection is not None:
                home.send_subscribe(channel, True)
                home.send_ping(announce=True)
                self._flush_soon(home)
            else:
                home.announce_at = 0
                self._start(home)
        self._update_up()

    def _flush_soon(self, shard: _Shard) -> None:
        if shard.connection is not None and self._nursery is not None:
            self._nursery.start_soon(shard.connection.flush)

    # -- receive path ---------------------------------------------------------------------------
    async def _read(self, shard: _Shard, connection: PubSubConnection) -> None:
        """Deliver what `connection` brings until it fails (RedisUnavailable)."""
        delivered = 0
        while True:
            for reply in await connection.receive():
                if type(reply) is list and reply[0] in _MESSAGE:
                    self._on_message(reply[1], reply[2])
                    delivered += 1
                    if delivered >= DELIVER_BATCH:
                        delivered = 0
                        await trio.lowlevel.checkpoint()  # one scheduler pass stays short
                else:
                    self._on_reply(shard, reply)

    def _on_message(self, channel: bytes, data: bytes) -> None:
        origin, sep, payload = data.partition(_SEP)
        if not sep or origin == self._origin:
            return  # not ours to read, or ours: delivered locally at publish time
        self.stats.received += 1
        name = channel.decode()
        if name in self._channels and self._deliver is not None:
            try:
                self._deliver(name, payload)
            except Exception:
                self.stats.errors += 1
                log.exception("delivery of a message on %s failed", name)

    def _on_reply(self, shard: _Shard, reply: Any) -> None:
        if isinstance(reply, RedisReplyError):
            if reply.code in ("MOVED", "ASK"):
                # SSUBSCRIBE on a master that no longer owns the slot: start over there.
                raise RedisUnavailable(f"subscription moved: {reply.message}")
            self.stats.errors += 1
            log.warning("redis refused a subscriber command: %s", reply.message)
            return
        if type(reply) is list and len(reply) >= 2:
            kind = reply[0]
            if kind in _SUBSCRIBED:
                event = self._confirmations.pop(reply[1].decode(), None)
                if event is not None:
                    event.set()
                return
            if kind in _UNSUBSCRIBED:
                channel = reply[1].decode() if reply[1] is not None else ""
                if shard.unsubscribing[channel] > 0:
                    shard.unsubscribing[channel] -= 1
                elif channel in shard.channels:
                    # Redis dropped it by itself (a cluster slot migrated): start over.
                    raise RedisUnavailable(f"redis unsubscribed {channel!r} by itself")
                return
            if kind == b"pong" and reply[1] == _RESYNC:
                self._pong(shard)
            return
        if reply == _RESYNC:  # a PING answered outside subscribed mode
            self._pong(shard)

    def _pong(self, shard: _Shard) -> None:
        shard.pongs += 1
        if shard.announce_at is not None and shard.pongs >= shard.announce_at:
            shard.announce_at = None
            # Every subscription sent before this PING is in effect.
            self.stats.resubscribed += 1
            try:
                self._resubscribed()
            except Exception:
                self.stats.errors += 1
                log.exception("an on_resubscribed listener failed")

    # -- Broker API -----------------------------------------------------------------------------
    async def publish(self, channel: str, data: bytes) -> None:
        """Deliver to this server's subscribers at once, then return once Redis confirmed
        the PUBLISH. Raises `BrokerUnavailable` when Redis did not within `publish_timeout`
        (this server's subscribers got the message; other servers may or may not have)."""
        client = self._client
        if self._deliver is None or client is None:
            raise RuntimeError("RedisBroker.publish() called before run() started")
        if channel in self._channels:
            self._deliver(channel, data)  # this server's subscribers, without a round trip
        payload = self._prefix + data
        failure: BaseException | None = None
        self._in_flight += 1
        try:
            with trio.move_on_after(self.publish_timeout):
                while True:
                    if not self._up.is_set():
                        await self._up.wait()
                    if self._stopping:
                        failure = BrokerUnavailable("the broker stopped")
                        break
                    try:
                        await client.execute(self._publish_command, channel, payload, key=channel)
                    except RedisUnavailable as exc:
                        if exc.maybe_sent:
                            failure = exc  # it may have reached Redis: never re-sent
                            break
                        # It never left: Redis is down; the subscriber will notice. Again.
                        await trio.sleep(self._reconnect_initial)
                        continue
                    except RedisError as exc:
                        failure = exc
                        self.stats.errors += 1
                        break
                    self.stats.published += 1
                    return
        finally:
            self._in_flight -= 1
        self.stats.failed += 1
        if failure is None:
            raise BrokerUnavailable(
                f"redis did not confirm the publish on {channel!r} within {self.publish_timeout:g}s"
            )
        if isinstance(failure, BrokerUnavailable):
            raise failure
        log.warning("redis publish on %s failed: %r", channel, failure)
        raise BrokerUnavailable(f"redis publish on {channel!r} failed: {failure!r}") from failure

    async def subscribe(self, channel: str) -> None:
        if self._deliver is None:
            raise RuntimeError("RedisBroker.subscribe() called before run() started")
        if channel in self._channels:
            await trio.lowlevel.checkpoint()
            return
        self._channels.add(channel)
        shard = self._home(channel)
        shard.channels.add(channel)
        self._start(shard)
        connection = shard.connection
        if connection is None and not shard.connecting:
            # Down: subscribed again when Redis is back; local delivery works meanwhile.
            self._update_up()
            await trio.lowlevel.checkpoint()
            return
        done = self._confirmations.setdefault(channel, trio.Event())
        if connection is not None:
            shard.send_subscribe(channel, self.cluster)
            await connection.flush()
        else:
            self._update_up()  # a new cluster shard: subscribed once it is connected
        with trio.move_on_after(self._subscribe_timeout):
            await done.wait()
        if not done.is_set():
            log.warning("redis did not confirm the subscription to %s in time", channel)

    def unsubscribe(self, channel: str) -> None:
        if channel not in self._channels:
            return
        self._channels.discard(channel)
        waiting = self._confirmations.pop(channel, None)
        if waiting is not None:
            waiting.set()
        shard = self._homes.pop(channel, None)
        if shard is None:
            return
        shard.channels.discard(channel)
        if shard.connection is not None:
            shard.unsubscribing[channel] += 1
            shard.connection.send_nowait("SUNSUBSCRIBE" if self.cluster else "UNSUBSCRIBE", channel)
            self._flush_soon(shard)

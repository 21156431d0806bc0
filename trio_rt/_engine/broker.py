"""The Broker seam: pub/sub between the servers of one deployment.

A manager publishes every broadcast through its broker exactly once, and delivers to its local
clients only what its broker hands back, so one process and fifty behave the same.
`MemoryBroker` is the in-process implementation (several managers in one process can share a
`MemoryHub`); `RedisBroker` (trio_rt.redis) implements the same contract across machines.

Two promises matter to rooms with history (docs/rooms.md, "The broker seam"): a `publish` that
returns has handed the message on (a broker that cannot do it in bounded time raises
`BrokerUnavailable`, and the sender is told), and a break in the subscriptions is announced
(`on_resubscribed`), so that servers re-read what they may have missed.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import trio

from .._core.envelope import Envelope, encode_envelope
from .._core.errors import TrioRTError

__all__ = [
    "Broker",
    "BrokerUnavailable",
    "Deliver",
    "DeliverEnvelope",
    "MemoryBroker",
    "MemoryHub",
]

Deliver = Callable[[str, bytes], None]
"""Called by a broker for each message on a subscribed channel. It must not block."""

DeliverEnvelope = Callable[[str, Envelope], None]
"""Called by an in-process broker for an envelope published with `Broker.publish_envelope`,
instead of `Deliver` with its encoding (see `Broker.accept_envelopes`). It must not block."""

Resubscribed = Callable[[], None]
"""Called by a broker after a break in its subscriptions, once they are back. Must not block."""


class BrokerUnavailable(TrioRTError):
    """`Broker.publish` could not hand the message to the other servers in bounded time.

    This server's own subscribers got it already; other servers may or may not have (the
    broker went away mid-publish). The caller should treat the message as refused.

    `stored_at` is set by `broadcast_to_room` in a room with history: the position the message
    was stored at ("refused but stored"; None otherwise).
    """

    stored_at: object | None = None  # a StreamPosition (typed loosely: no import cycle)


class Broker(abc.ABC):
    """Publish/subscribe on named channels.

    Contract (the same tests run against every implementation,
    tests/engine/test_broker_contract.py):

    - ``run(deliver)`` runs the broker's I/O until cancelled; ``task_status.started()`` is called
      once the broker can publish and subscribe. All its tasks live inside ``run``.
    - ``publish(channel, data)`` hands `data` to every server subscribed to `channel`, this one
      included, once. Messages published by one task on one channel arrive in that order.
      It returns only once the message has been handed on for every subscribed server (for
      Redis: Redis replied to the PUBLISH); this server's own subscribers get it at once,
      before that. When the broker cannot do so in bounded time it raises
      `BrokerUnavailable` (this server's subscribers got the message; others may not have).
    - ``subscribe(channel)`` returns once messages published afterwards will be delivered.
      Subscribing twice is the same as once.
    - ``unsubscribe(channel)`` stops delivery soon (not necessarily at once; late messages are
      harmless because the manager filters by local membership). It never blocks, and it has
      taken effect once a later ``subscribe`` returns.
    - ``on_resubscribed(callback)``: after any break in the broker's subscriptions (messages
      published meanwhile may never be delivered here), once they are back, the broker calls
      every registered ``callback()`` (sync, from its delivery path, after the messages it
      delivered before the break). A broker whose subscriptions cannot break (MemoryBroker)
      never calls them.
    """

    spans_processes: bool = False
    """True for a broker that connects several processes (`RedisBroker`): components warn
    when such a broker is paired with per-process state (a memory sequencer or store)."""

    def on_resubscribed(self, callback: Resubscribed) -> None:
        """Register `callback`, called after each break in the subscriptions, once they are
        back (see the contract)."""
        self.__dict__.setdefault("_resubscribed_callbacks", []).append(callback)

    def _resubscribed(self) -> None:
        """For implementations: the subscriptions broke and are back; tell the listeners."""
        for callback in list(self.__dict__.get("_resubscribed_callbacks", ())):
            callback()

    @abc.abstractmethod
    async def run(
        self, deliver: Deliver, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None: ...

    @abc.abstractmethod
    async def publish(self, channel: str, data: bytes) -> None: ...

    async def publish_envelope(self, channel: str, env: Envelope) -> None:
        """`publish` of `env` encoded (`encode_envelope`), with `publish`'s contract. A broker
        whose subscribers are in this process (`MemoryBroker`) may hand `env` itself to those
        that `accept_envelopes`, skipping the encoding and their decoding."""
        await self.publish(channel, encode_envelope(env))

    def accept_envelopes(self, deliver: DeliverEnvelope) -> None:
        """Offer `deliver` for envelopes published by `publish_envelope` in this process: a
        broker may call it instead of `run`'s `Deliver` with the encoded envelope (same
        channels, same order). Brokers that cross processes ignore it (the default)."""
        del deliver  # only bytes cross processes

    @abc.abstractmethod
    async def subscribe(self, channel: str) -> None: ...

    @abc.abstractmethod
    def unsubscribe(self, channel: str) -> None: ...

    @property
    @abc.abstractmethod
    def channels(self) -> frozenset[str]:
        """The channels this broker is subscribed to."""

    @property
    def backlog(self) -> int:
        """Messages waiting in the broker's own queues, both directions (0 if it has none)."""
        return 0


class MemoryHub:
    """Connects the MemoryBrokers of one process, as Redis connects servers.

    Its underscore methods, and `MemoryBroker._receive`, are the two classes' private
    protocol: called by each other only, in this module (nothing for apps to call)."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[MemoryBroker]] = {}

    def _publish(self, channel: str, data: bytes) -> None:
        # Copy: a delivery may (un)subscribe, e.g. a kicked member leaving a room.
        for broker in tuple(self._subscribers.get(channel, ())):
            broker._receive(channel, data)

    def _publish_envelope(self, channel: str, env: Envelope) -> None:
        for broker in tuple(self._subscribers.get(channel, ())):  # copy: as `_publish`
            broker._receive_envelope(channel, env)

    def _subscribe(self, broker: MemoryBroker, channel: str) -> None:
        self._subscribers.setdefault(channel, set()).add(broker)

    def _unsubscribe(self, broker: MemoryBroker, channel: str) -> None:
        brokers = self._subscribers.get(channel)
        if brokers is not None:
            brokers.discard(broker)
            if not brokers:
                del self._subscribers[channel]


class MemoryBroker(Broker):
    """In-process broker. Delivery is synchronous inside ``publish``: no queue, no task, so a
    publish that returns has reached every subscriber, and it never raises
    `BrokerUnavailable`; its subscriptions never break.

    Pass the same `hub` to several brokers to connect several managers in one process (tests,
    examples of scale-out without Redis).
    """

    def __init__(self, hub: MemoryHub | None = None) -> None:
        self._hub = hub if hub is not None else MemoryHub()
        self._channels: set[str] = set()
        self._deliver: Deliver | None = None
        self._deliver_envelope: DeliverEnvelope | None = None

    @property
    def channels(self) -> frozenset[str]:
        return frozenset(self._channels)

    async def run(
        self, deliver: Deliver, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        if self._deliver is not None:
            raise RuntimeError("this MemoryBroker is already running")
        self._deliver = deliver
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            for channel in self._channels:
                self._hub._unsubscribe(self, channel)
            self._channels.clear()
            self._deliver = None

    def _receive(self, channel: str, data: bytes) -> None:
        if self._deliver is not None:
            self._deliver(channel, data)

    def _receive_envelope(self, channel: str, env: Envelope) -> None:
        if self._deliver is not None:
            if self._deliver_envelope is not None:
                self._deliver_envelope(channel, env)
            else:
                self._deliver(channel, encode_envelope(env))

    def accept_envelopes(self, deliver: DeliverEnvelope) -> None:
        self._deliver_envelope = deliver

    async def publish(self, channel: str, data: bytes) -> None:
        self._hub._publish(channel, data)
        # Let the writers woken by this delivery run before the next publish.
        await trio.lowlevel.checkpoint()

    async def publish_envelope(self, channel: str, env: Envelope) -> None:
        """The envelope itself to the subscribed brokers that accept envelopes, encoded to
        the others: in one process nothing needs the bytes (about 0.1 µs per delivery of a
        200-recipient fan-out, docs/performance.md). A subclass that overrides `publish`
        (tests: a broker that refuses) keeps it: its envelopes go through `publish`."""
        if type(self).publish is not MemoryBroker.publish:
            await self.publish(channel, encode_envelope(env))
            return
        self._hub._publish_envelope(channel, env)
        await trio.lowlevel.checkpoint()

    async def subscribe(self, channel: str) -> None:
        if self._deliver is None:
            raise RuntimeError("MemoryBroker.subscribe() called before run() started")
        self._channels.add(channel)
        self._hub._subscribe(self, channel)
        await trio.lowlevel.checkpoint()

    def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        self._hub._unsubscribe(self, channel)

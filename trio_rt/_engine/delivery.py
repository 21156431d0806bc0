"""Delivery: what goes through the broker, both ways.

Out: a broadcast is encoded once, wrapped in an `Envelope` (`_core/envelope.py`) and published on
the channel of each target room (``<prefix>:room:<name>``), on ``<prefix>:all``, or, for the
app's cross-server messages, on ``<prefix>:servers``. In a room with history the message is
stored first and carries its position.

In: the broker hands every message to `on_broker_message` (sync: it never waits on a
client); an in-process broker hands the envelope itself to `on_broker_envelope` (nothing
encoded or decoded in between):

- a channel an extension listens on (`listen`: the change streams' nudges) goes to its
  listener as raw bytes;
- ``:servers``: into the cross-server inbox, a bounded channel (`SERVER_INBOX_SIZE`, newer
  messages dropped and logged beyond) drained by one task that runs the app's handlers;
- ``:all`` and room channels: to the local recipients (each member of several target rooms
  once, `recipients`), with one cork decision for all of them (`FlushQueue.begin`);
- a kick: the kicked user's connections leave the room and are told;
- a message with a position (a room with history): through the room's `RoomOrdering` (offset
  order, each once), then to the members, each past the position it joined at, a member
  that recovers through its `ReplayGate`; ranges skipped unread become ``room_gap`` notices.

The room registry is shared with the rooms part (`_engine/room_service.py`), which tells this part
when a room has no local member left (`room_emptied`) or a member left (`member_left`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from .._core.envelope import (
    KIND_KICK,
    KIND_SERVER,
    Envelope,
    decode_envelope,
    encode_envelope,
    recipients,
    unique_rooms,
)
from .._core.outbox import OutboundMessage
from .._core.protocol import StreamPosition, encode
from .._core.rooms import LeaveResult, RoomRegistry
from .._core.stats import Instruments, ServerStats
from .broker import Broker, BrokerUnavailable
from .connection import Connection
from .flush import FlushQueue
from .room_order import RoomOrdering

if TYPE_CHECKING:
    from .history import RoomHistory

__all__ = ["SERVER_INBOX_SIZE", "Channels", "Delivery", "ServerMessageHandler"]

log = logging.getLogger("trio_rt")

SERVER_INBOX_SIZE = 1000  # cross-server messages waiting for their handlers
ServerMessageHandler = Callable[[dict[str, Any], str], Awaitable[None]]


class Channels:
    """The broker channels of one server's cluster (``<prefix>`` is `channel_prefix`)."""

    __slots__ = ("all", "room_prefix", "servers")

    def __init__(self, prefix: str) -> None:
        self.all = f"{prefix}:all"  # broadcast to every client
        self.servers = f"{prefix}:servers"  # the app's cross-server messages
        self.room_prefix = f"{prefix}:room:"

    def room(self, name: str) -> str:
        return self.room_prefix + name


class Delivery:
    """Broadcasts out, broker messages in (see the module docstring).

    `order` is the `RoomOrdering` of the rooms with history (run by the manager). `listen`
    and `stop_listening` let an extension receive a channel's raw messages; `server_handlers`
    are the app's cross-server handlers, run by `run_server_inbox`. `instruments` (set while a
    metrics object is attached) observes each broadcast delivered.
    """

    def __init__(
        self,
        server_id: str,
        broker: Broker,
        channels: Channels,
        rooms: RoomRegistry[Connection],
        connections: Mapping[str, Connection],
        flushes: FlushQueue[Connection],
        stats: ServerStats,
        history: RoomHistory | None,
    ) -> None:
        self.server_id = server_id
        self.broker = broker
        self.channels = channels
        self.history = history
        self._rooms = rooms
        self._connections = connections
        self._flushes = flushes
        self._stats = stats
        # Rooms with history: their messages in offset order, each once (one buffer per room);
        # after a break in the broker's subscriptions they re-read what they may have missed.
        self.order = RoomOrdering(
            self._fan_out_positioned, stats, self._room_gap, history, self._send_to_member
        )
        broker.on_resubscribed(self.order.resync)
        self.listeners: dict[str, Callable[[bytes], None]] = {}
        self.server_handlers: list[ServerMessageHandler] = []
        self._server_inbox: trio.MemorySendChannel[tuple[dict[str, Any], str]] | None = None
        self.instruments: Instruments | None = None

    # -- out ----------------------------------------------------------------------------------
    async def publish(
        self, rooms: tuple[str, ...] | None, data: dict[str, Any], exclude: Connection | None
    ) -> None:
        """`data` to every client (`rooms` None), or to the members of `rooms` (each once)."""
        payload = encode(data)  # serialize once, whatever the number of recipients
        self._stats.broadcasts += 1
        env = Envelope(payload, rooms=rooms, exclude=exclude.id if exclude is not None else None)
        if rooms is None:
            await self.broker.publish_envelope(self.channels.all, env)
            return
        if not rooms:
            await trio.lowlevel.checkpoint()
        for room in rooms:
            await self.broker.publish_envelope(self.channels.room(room), env)

    async def publish_to_rooms(
        self, rooms: Iterable[str], data: dict[str, Any], exclude: Connection | None
    ) -> None:
        if isinstance(rooms, str):
            raise TypeError("rooms must be an iterable of room names, not a string")
        await self.publish(unique_rooms(rooms), data, exclude)

    async def publish_to_room(
        self, room: str, data: dict[str, Any], exclude: Connection | None
    ) -> StreamPosition | None:
        """`WebSocketManager.broadcast_to_room`: stored first in a room with history."""
        history = self.history
        if history is None or not history.enabled(room):
            await self.publish((room,), data, exclude)
            return None
        position, payload = await history.record(room, data)
        self._stats.broadcasts += 1
        env = Envelope(
            payload,
            rooms=(room,),
            exclude=exclude.id if exclude is not None else None,
            offset=position.offset,
            epoch=position.epoch,
        )
        try:
            await self.broker.publish_envelope(self.channels.room(room), env)
        except BrokerUnavailable as exc:
            exc.stored_at = position  # "refused but stored": acks need the position
            raise
        return position

    async def publish_kick(self, room: str, payload: bytes, user_id: str) -> None:
        env = Envelope(payload, rooms=(room,), kind=KIND_KICK, user_id=user_id)
        await self.broker.publish_envelope(self.channels.room(room), env)

    async def send_to_servers(self, data: dict[str, Any]) -> None:
        env = Envelope(encode(data), kind=KIND_SERVER, origin=self.server_id)
        await self.broker.publish_envelope(self.channels.servers, env)

    # -- listeners ----------------------------------------------------------------------------
    async def listen(self, channel: str, handler: Callable[[bytes], None]) -> None:
        """Hand `channel`'s raw messages to `handler` (sync, must not wait); subscribed once
        this returns."""
        self.listeners[channel] = handler
        await self.broker.subscribe(channel)

    def stop_listening(self, channel: str) -> None:
        """Undo `listen` (idempotent)."""
        if self.listeners.pop(channel, None) is not None:
            self.broker.unsubscribe(channel)

    # -- membership bookkeeping (the rooms part calls these) ----------------------------------
    def room_emptied(self, room: str) -> None:
        """No local member is left: stop receiving the room and forget its reorder state."""
        self.broker.unsubscribe(self.channels.room(room))
        self.order.drop(room)

    def member_left(self, room: str, conn_id: str, result: LeaveResult) -> None:
        """`conn_id` left `room` (`result` of the registry's leave)."""
        if result.last_member:
            self.room_emptied(room)
        elif result.left and self.history is not None:
            self.order.left(room, conn_id)

    # -- in -----------------------------------------------------------------------------------
    def on_broker_message(self, channel: str, data: bytes) -> None:
        """Deliver what the broker hands us to local clients. Sync: it never waits on a client."""
        listener = self.listeners.get(channel)
        if listener is not None:
            listener(data)
            return
        try:
            env = decode_envelope(data)
        except ValueError:
            log.warning("ignoring a message on %s that is not a trio_rt envelope", channel)
            return
        self.on_broker_envelope(channel, env)

    def on_broker_envelope(self, channel: str, env: Envelope) -> None:
        """`on_broker_message` once decoded; an in-process broker hands the envelope here
        directly (`Broker.accept_envelopes`). Sync: it never waits on a client."""
        listener = self.listeners.get(channel)
        if listener is not None:  # a raw channel: give it the bytes it would have had
            listener(encode_envelope(env))
            return
        channels = self.channels
        if channel == channels.servers:
            self._queue_server_message(env)
            return
        instruments = self.instruments
        started = time.perf_counter() if instruments is not None else 0.0
        if channel == channels.all:
            targets: list[Connection] = list(self._connections.values())
        elif channel.startswith(channels.room_prefix):
            room = channel[len(channels.room_prefix) :]
            if env.kind == KIND_KICK:
                self._apply_kick(room, env)
                return
            if env.offset is not None:  # a room with history: delivered in offset order
                self._feed_positioned(room, env)
                return
            targets = recipients(env, room, self._rooms.members_of, self._rooms.rooms_of)
        else:
            return
        message = OutboundMessage(env.payload)
        exclude = env.exclude
        cork = self._flushes.begin()  # one decision for every recipient
        if exclude is None:  # the usual case: no test per recipient (this loop runs for each)
            for conn in targets:
                conn.send_encoded(message, cork)
            n = len(targets)
        else:
            n = 0
            for conn in targets:
                if conn.id != exclude:
                    conn.send_encoded(message, cork)
                    n += 1
        self._stats.deliveries += n
        if instruments is not None:
            instruments.fanned_out(n, time.perf_counter() - started)

    def _apply_kick(self, room: str, env: Envelope) -> None:
        message = OutboundMessage(env.payload)
        for conn in self._rooms.members_of(room):
            if conn.user_id is not None and conn.user_id == env.user_id:
                self.member_left(room, conn.id, self._rooms.leave(conn, room))
                conn.send_encoded(message)

    # -- rooms with history: offset order -------------------------------------------------------
    def _feed_positioned(self, room: str, env: Envelope) -> None:
        """A room message with a position, from the broker: in offset order, each once, through
        the room's ReorderBuffer (opened when its first local member joins)."""
        if self.history is None:  # another server keeps history; this one has no window: as is
            self._fan_out_positioned(room, [env])
            return
        if not self.order.has(room):
            existing = self._rooms.get(room)
            if existing is None or not existing.members:
                return  # in flight after the last member left: nobody to deliver to
        self.order.feed(room, env)

    def _fan_out_positioned(self, room: str, envs: list[Envelope]) -> None:
        """Deliver room messages with positions, in the given order. Members recovering the
        room get them through their gate (RoomOrdering.gate_live); a member gets no offset at
        or below the position it joined at, nor one its recovery already sent from the
        store."""
        instruments = self.instruments
        cork = self._flushes.begin()  # one decision for every recipient
        order = self.order
        replayed = order.replayed.get(room)
        gates = order.gates.get(room)
        for env in envs:
            started = time.perf_counter() if instruments is not None else 0.0
            offset = env.offset
            assert offset is not None
            floors = order.floor_filter(room, env.epoch, offset)
            message = OutboundMessage(env.payload)
            n = 0
            for conn in recipients(env, room, self._rooms.members_of, self._rooms.rooms_of):
                if conn.id == env.exclude:
                    continue
                if floors is not None:
                    floor = floors.get(conn.id)
                    if floor is not None and offset <= floor:
                        continue
                if replayed:
                    seen = replayed.get(conn.id)
                    if seen is not None and offset in seen:
                        seen.discard(offset)
                        continue
                if gates and conn.id in gates:
                    for out in order.gate_live(room, conn.id, env):
                        conn.send_encoded(
                            message if out is env else OutboundMessage(out.payload), cork
                        )
                else:
                    conn.send_encoded(message, cork)
                n += 1
            self._stats.deliveries += n
            if instruments is not None:
                instruments.fanned_out(n, time.perf_counter() - started)

    def _send_to_member(self, room: str, conn_id: str, envs: list[Envelope]) -> None:
        """Room messages a member's recovery gate let go (RoomOrdering), in order."""
        conn = self._connections.get(conn_id)
        if conn is None or room not in self._rooms.rooms_of(conn):
            return
        cork = self._flushes.begin()
        for env in envs:
            conn.send_encoded(OutboundMessage(env.payload), cork)
        self._stats.deliveries += len(envs)

    def _room_gap(
        self,
        room: str,
        epoch: str,
        first: int,
        last: int | None,
        reason: str,
        member: str | None = None,
    ) -> None:
        """Tell `room`'s local members (or only `member`, a connection id) that offsets
        first..last (last None: up to the newest) may not have reached them
        (docs/protocol.md, ``room_gap``)."""
        message: dict[str, Any] = {
            "type": "room_gap",
            "room": room,
            "after": StreamPosition(first - 1, epoch).to_json(),
        }
        if last is not None:
            message["before"] = StreamPosition(last + 1, epoch).to_json()
        message["reason"] = reason
        log.warning(
            "room %r: offsets %d..%s of epoch %s skipped unread (%s); members told",
            room,
            first,
            "" if last is None else last,
            epoch,
            reason,
        )
        outbound = OutboundMessage(encode(message))
        floors = self.order.floors.get(room) or {}
        for conn in self._rooms.members_of(room):
            if member is not None and conn.id != member:
                continue
            floor = floors.get(conn.id)
            if last is not None and floor is not None and last <= floor:
                continue  # the whole range is from before it joined
            conn.send_encoded(outbound)

    # -- the cross-server inbox -----------------------------------------------------------------
    def _queue_server_message(self, env: Envelope) -> None:
        if env.kind != KIND_SERVER or env.origin == self.server_id or self._server_inbox is None:
            return
        try:
            message = json.loads(env.payload)
        except ValueError:
            log.warning("ignoring a cross-server message that is not JSON")
            return
        try:
            self._server_inbox.send_nowait((message, env.origin or ""))
        except trio.WouldBlock:
            log.error("cross-server message dropped: %d are already waiting", SERVER_INBOX_SIZE)

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the broker in `nursery` delivering to `on_broker_message`, subscribe the
        server's channels and start the cross-server inbox; return once all are ready."""
        self.broker.accept_envelopes(self.on_broker_envelope)
        await nursery.start(self.broker.run, self.on_broker_message)
        await self.broker.subscribe(self.channels.all)
        await nursery.start(self.run_server_inbox)
        await self.broker.subscribe(self.channels.servers)

    async def run_server_inbox(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The one task that runs the cross-server handlers, one message at a time, until
        cancelled; messages arriving before it started are not kept."""
        send, receive = trio.open_memory_channel[tuple[dict[str, Any], str]](SERVER_INBOX_SIZE)
        self._server_inbox = send
        try:
            task_status.started()
            async with receive:
                async for message, origin in receive:
                    for handler in self.server_handlers:
                        try:
                            await handler(message, origin)
                        except Exception:
                            log.exception("cross-server message handler failed")
        finally:
            self._server_inbox = None

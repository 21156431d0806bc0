"""RoomService: rooms and who may use them, on one server.

The membership rules are `RoomRegistry`'s (`_core/rooms.py`, sans-IO); this part adds what needs
I/O or the server's other parts:

- the rooms' lives: `create_room` / `delete_room` (with the `RoomStore` for persistent
  rooms), `join` / `leave_room` (subscribing a room's broker channel for its first local
  member, unsubscribing after its last; `max_rooms_per_connection`), `kick` (published, so
  it reaches every server);
- authorization: `authorize` (the `PermissionStore`, or the open server's actions without
  one), private rooms (a moderator, or an explicit grant), `may_broadcast` (an app message's
  `room_field` check);
- the built-in commands about rooms: ``join_room`` (with ``since``: a recovery, merged with
  the live messages through the member's `ReplayGate`, `RoomOrdering.recover_from`),
  ``leave_room``, ``history``, ``kick``.

What reaches a room's members goes through `Delivery` (`_engine/delivery.py`), which this part tells
when a member leaves (`Delivery.member_left`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import trio

from .._core.options import ServerOptions
from .._core.outbox import OutboundMessage
from .._core.protocol import (
    ErrorCode,
    History,
    JoinRoom,
    Kick,
    LeaveRoom,
    StreamPosition,
    encode,
    reply,
    validate_room_name,
)
from .._core.rooms import Room, RoomError, RoomRegistry
from .connection import Connection
from .delivery import Delivery
from .flush import FlushQueue
from .permissions import PermissionStore
from .room_store import RoomSettings, RoomStore
from .streams import Recovery

if TYPE_CHECKING:
    from .history import RoomHistory

__all__ = ["OPEN_ACTIONS", "RoomService"]

log = logging.getLogger("trio_rt")

# What `authorize` grants when no PermissionStore is configured: the open server of before.
# `moderate` (and any other action) needs a store; private rooms always need a grant.
OPEN_ACTIONS = frozenset({"join", "read", "broadcast"})


class RoomService:
    """Rooms, membership and authorization (see the module docstring). The manager's public
    room methods delegate here; the ``*_command`` methods are the built-in commands'
    handlers in the dispatch table."""

    def __init__(
        self,
        options: ServerOptions,
        registry: RoomRegistry[Connection],
        connections: Mapping[str, Connection],
        delivery: Delivery,
        flushes: FlushQueue[Connection],
        history: RoomHistory | None,
        room_store: RoomStore | None,
        permissions: PermissionStore | None,
    ) -> None:
        self.options = options
        self.registry = registry
        self.history = history
        self.room_store = room_store
        self.permissions = permissions
        self._connections = connections
        self._delivery = delivery
        self._order = delivery.order
        self._flushes = flushes
        # A room's channel being subscribed for its first local member: later joiners wait.
        self.pending_subscriptions: dict[str, trio.Event] = {}

    async def load(self) -> None:
        """Create the persistent rooms of the `room_store` (at start)."""
        if self.room_store is None:
            return
        for settings in await self.room_store.load():
            self.registry.create(
                settings.name,
                max_users=settings.max_users,
                persistent=True,
                moderators=settings.moderators,
                private=settings.private,
            )

    # -- authorization ------------------------------------------------------------------------
    async def authorize(self, conn: Connection, resource: str, action: str) -> bool:
        """`WebSocketManager.authorize`."""
        store = self.permissions
        if store is None:
            await trio.lowlevel.checkpoint()
            return action in OPEN_ACTIONS
        try:
            return bool(await store.has_permission(conn.user_id, resource, action))
        except Exception:
            log.exception("permission store failed for %r %s %s; refusing", conn, resource, action)
            return False

    async def room_allowed(self, conn: Connection, room: Room[Connection], action: str) -> bool:
        """Public rooms: `authorize`. Private rooms: a listed moderator, or an explicit grant
        from the store (no store: nobody else)."""
        if not room.private:
            return await self.authorize(conn, f"room:{room.name}", action)
        if conn.user_id is not None and conn.user_id in room.moderators:
            await trio.lowlevel.checkpoint()
            return True
        if self.permissions is None:
            await trio.lowlevel.checkpoint()
            return False
        return await self.authorize(conn, f"room:{room.name}", action)

    async def may_broadcast(self, conn: Connection, name: str) -> bool:
        """May `conn` broadcast to room `name` (an app message's `room_field` check)?"""
        room = self.registry.get(name)
        if room is not None:
            return await self.room_allowed(conn, room, "broadcast")
        return await self.authorize(conn, f"room:{name}", "broadcast")

    # -- rooms ----------------------------------------------------------------------------------
    async def create_room(
        self,
        name: str,
        *,
        max_users: int | None,
        persistent: bool,
        moderators: Iterable[str],
        private: bool,
    ) -> Room[Connection]:
        """`WebSocketManager.create_room`."""
        existing = self.registry.get(name)
        if self.room_store is not None:
            validate_room_name(name)
            if persistent:
                moderators = frozenset(moderators)
                await self.room_store.save(RoomSettings(name, max_users, moderators, private))
            elif existing is not None and existing.persistent:
                await self.room_store.delete(name)
        room = self.registry.create(
            name, max_users=max_users, persistent=persistent, moderators=moderators, private=private
        )
        await trio.lowlevel.checkpoint()
        return room

    async def delete_room(self, name: str) -> None:
        """`WebSocketManager.delete_room`."""
        existing = self.registry.get(name)
        if self.room_store is not None and existing is not None and existing.persistent:
            await self.room_store.delete(name)
        members = self.registry.delete(name)
        if members:
            self._delivery.room_emptied(name)
        msg = OutboundMessage(encode({"type": "room_left", "room": name, "reason": "deleted"}))
        cork = self._flushes.begin()
        for conn in members:
            conn.send_encoded(msg, cork)
        await trio.lowlevel.checkpoint()

    async def join(
        self, conn: Connection, room: str, since: StreamPosition | None = None
    ) -> tuple[bool, object | None]:
        """`WebSocketManager.join_room`; with `since` (a room with history), the member
        recovers from it: it is put behind a gate before the first await
        (RoomOrdering.recover_from). Returns whether it joined, and the recovery's token
        (None: no gate)."""
        validate_room_name(room)
        if conn.id not in self._connections:
            await trio.lowlevel.checkpoint()
            return False, None
        registry = self.registry
        cap = self.options.max_rooms_per_connection
        if cap is not None and registry.room_count(conn) >= cap:
            current = registry.get(room)
            if current is None or conn not in current.members:
                raise RoomError(
                    ErrorCode.LIMIT_EXCEEDED, f"a connection can be in at most {cap} rooms"
                )
        result = registry.join(conn, room)
        delivery = self._delivery
        channel = delivery.channels.room(room)
        history = self.history
        ordered = history is not None and history.enabled(room)
        token: object | None = None
        if ordered:
            self._order.open(room)  # what arrives before its start waits for it
            if since is not None:
                token = self._order.recover_from(room, conn.id, since)
        if result.first_member:
            done = self.pending_subscriptions[channel] = trio.Event()
            try:
                await delivery.broker.subscribe(channel)
            except BaseException:
                delivery.member_left(room, conn.id, registry.leave(conn, room))
                raise
            finally:
                done.set()
                if self.pending_subscriptions.get(channel) is done:
                    del self.pending_subscriptions[channel]
        else:
            pending = self.pending_subscriptions.get(channel)
            if pending is not None:
                await pending.wait()
            else:
                await trio.lowlevel.checkpoint()
        if ordered and not self._order.started(room) and self._order.has(room):
            # The room's order starts where its first local member joined: offsets at or
            # below are the past (subscribed first, so everything after it arrives).
            assert history is not None
            try:
                position = await history.current(room)
            except Exception:
                log.warning(
                    "could not read the position of room %r; its order starts at its first message",
                    room,
                    exc_info=True,
                )
            else:
                self._order.start(room, position)
        return result.joined, token

    async def leave_room(self, conn: Connection, room: str) -> bool:
        """`WebSocketManager.leave_room`."""
        result = self.registry.leave(conn, room)
        self._delivery.member_left(room, conn.id, result)
        await trio.lowlevel.checkpoint()
        return result.left

    def leave_all(self, conn: Connection) -> None:
        """`conn` ended: it leaves every room (sync)."""
        member_left = self._delivery.member_left
        for room, result in self.registry.leave_all(conn):
            member_left(room, conn.id, result)

    async def kick(self, room: str, user_id: str, *, by: str | None, reason: str) -> None:
        """`WebSocketManager.kick`."""
        payload = encode({"type": "room_kicked", "room": room, "by": by, "reason": reason})
        await self._delivery.publish_kick(room, payload, user_id)

    # -- built-in commands --------------------------------------------------------------------
    async def join_command(self, conn: Connection, command: JoinRoom) -> None:
        room = self.registry.get(command.room)
        # A refusal is exactly the answer for a room that does not exist: reveal nothing.
        if room is not None and room.private and not await self.room_allowed(conn, room, "join"):
            raise RoomError(ErrorCode.NOT_PERMITTED, f"cannot join room {room.name!r}")
        room_name, request_id, history = command.room, command.request_id, self.history
        if history is None or not history.enabled(room_name):
            await self.join(conn, room_name)
            await conn.send(reply("room_joined", request_id, room=room_name))
            return
        if command.since is None:
            await self.join(conn, room_name)
            position = await history.current(room_name)
            self._order.member(room_name, conn.id, position, reach_back=False)
            await conn.send(
                reply("room_joined", request_id, room=room_name, position=position.to_json())
            )
            return
        await self._recover(conn, room_name, command.since, request_id, history)

    async def _recover(
        self,
        conn: Connection,
        room: str,
        since: StreamPosition,
        request_id: str | int | None,
        history: RoomHistory,
    ) -> None:
        """``join_room`` with ``since``: what the room's order lets go for this member waits
        in a gate while the missed ones are read; then both go out merged by offset, each
        once, in order (RoomOrdering.recover_from, ReplayGate)."""
        token: object | None = None
        result: Recovery | None = None
        try:
            _, token = await self.join(conn, room, since)
            try:
                result = await history.recover(room, since)
            except Exception:
                log.exception("recovery of room %r failed; the client will refetch", room)
                result = Recovery([], since, "unavailable")
        finally:
            # No await from here on: what the gate lets go is sent, then the reply.
            out, at = self._order.recovered(room, conn.id, token, result)
            for env in out:
                conn.send_encoded(OutboundMessage(env.payload))
        assert result is not None
        recovered, reason = result.recovered, result.reason
        if recovered and at is None and token is not None and room in self.registry.rooms_of(conn):
            # A new epoch began while the replay read the store: the gate ended, what it
            # held went out; positions of the old epoch mean nothing now.
            recovered, reason = False, "epoch_changed"
        answer = reply(
            "room_joined",
            request_id,
            room=room,
            position=(at if at is not None else result.position).to_json(),
            recovered=recovered,
        )
        if reason is not None:
            answer["reason"] = reason
        await conn.send(answer)

    async def leave_command(self, conn: Connection, command: LeaveRoom) -> None:
        await self.leave_room(conn, command.room)
        await conn.send(reply("room_left", command.request_id, room=command.room))

    async def history_command(self, conn: Connection, command: History) -> None:
        history = self.history
        if history is None or not history.enabled(command.room):
            raise RoomError(ErrorCode.NOT_PERMITTED, f"room {command.room!r} keeps no history")
        if command.room not in self.registry.rooms_of(conn):
            raise RoomError(
                ErrorCode.NOT_IN_ROOM, f"join room {command.room!r} to read its history"
            )
        entries, current = await history.page(
            command.room, command.limit, command.before, command.after
        )
        # The stored messages are JSON already: splice them in rather than parse and re-encode.
        head = reply("history", command.request_id, room=command.room)
        head["position"] = current.to_json()
        opening = encode(head)[:-1] + b',"messages":['
        body = b",".join(e.payload.encode("utf-8") for e in entries)
        conn.send_encoded(OutboundMessage(opening + body + b"]}"))
        await trio.lowlevel.checkpoint()

    async def kick_command(self, conn: Connection, command: Kick) -> None:
        if not self.registry.is_moderator(command.room, conn.user_id) and not await self.authorize(
            conn, f"room:{command.room}", "moderate"
        ):
            raise RoomError(
                ErrorCode.NOT_PERMITTED,
                f"only a moderator of room {command.room!r} can kick",
            )
        await self.kick(command.room, command.user_id, by=conn.user_id, reason="")
        await conn.send(
            reply("kicked", command.request_id, room=command.room, user_id=command.user_id)
        )

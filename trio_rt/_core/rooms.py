"""Room rules, sans-IO: membership both ways, max users, persistence flags, moderators.

`RoomRegistry` knows nothing about sockets or brokers. It reports the transitions the engine
needs to act on (a room's first local member: subscribe its broker channel; its last: unsubscribe).
A refusal is a `RoomError` (defined in trio_rt/_core/errors.py, re-exported here): a
`ProtocolError`, so the engine answers it like any other refused message.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .checks import int_problem, require
from .errors import ErrorCode, RoomError
from .protocol import validate_room_name

__all__ = ["JoinResult", "LeaveResult", "Room", "RoomError", "RoomRegistry"]

M = TypeVar("M", bound=Hashable)


@dataclass(slots=True, eq=False)
class Room(Generic[M]):
    """One room on this server: its settings and its local members."""

    name: str
    max_users: int | None = None
    persistent: bool = False
    moderators: frozenset[str] = frozenset()
    private: bool = False  # clients join only with a `join` grant (or as a moderator)
    members: set[M] = field(default_factory=set)

    @property
    def full(self) -> bool:
        return self.max_users is not None and len(self.members) >= self.max_users


@dataclass(frozen=True, slots=True)
class JoinResult:
    joined: bool  # False when the member was already in the room (join is idempotent)
    first_member: bool  # the room had no local member before: subscribe its channel


@dataclass(frozen=True, slots=True)
class LeaveResult:
    left: bool  # False when the member was not in the room (leave is idempotent)
    last_member: bool  # the room has no local member now: unsubscribe its channel
    removed: bool  # the room was non-persistent and empty, and is gone


class RoomRegistry(Generic[M]):
    """Rooms and their members, with membership queryable both ways.

    `max_users` counts the members on this server; a cluster-wide cap needs a shared store
    (docs/rooms.md). Rooms that do not exist are created on first join when `auto_create` is true,
    with default settings, and removed again when their last member leaves unless persistent.
    """

    def __init__(self, *, auto_create: bool = True) -> None:
        self.auto_create = auto_create
        self._rooms: dict[str, Room[M]] = {}
        self._memberships: dict[M, set[str]] = {}
        # Called after every membership change: (member, room, joined). Sync; must not raise
        # (presence follows membership through this: trio_rt/_engine/presence.py).
        self.observers: list[Callable[[M, str, bool], None]] = []

    # -- rooms ---------------------------------------------------------------------------------
    def create(
        self,
        name: str,
        *,
        max_users: int | None = None,
        persistent: bool = False,
        moderators: Iterable[str] = (),
        private: bool = False,
    ) -> Room[M]:
        """Create a room, or update the settings of an existing one (members are kept).

        Raises ValueError for a bad name or max_users; lowering max_users below the current
        member count keeps the members but refuses further joins.
        """
        try:
            validate_room_name(name)
        except Exception as exc:
            raise ValueError(f"invalid room name {name!r}: {exc}") from None
        require(int_problem("max_users", max_users, allow_none=True))
        if isinstance(moderators, str):
            raise ValueError("moderators must be an iterable of user ids, not a string")
        mods = frozenset(moderators)
        if not all(isinstance(m, str) and m for m in mods):
            raise ValueError("moderators must be non-empty strings")
        room = self._rooms.get(name)
        if room is None:
            room = Room(name, max_users, persistent, mods, bool(private))
            self._rooms[name] = room
        else:
            room.max_users = max_users
            room.persistent = persistent
            room.moderators = mods
            room.private = bool(private)
        return room

    def get(self, name: str) -> Room[M] | None:
        return self._rooms.get(name)

    def delete(self, name: str) -> set[M]:
        """Remove a room; returns the members it had (the caller notifies them)."""
        room = self._rooms.pop(name, None)
        if room is None:
            return set()
        for member in room.members:
            self._forget(member, name)
            for observe in self.observers:
                observe(member, name, False)
        return room.members

    @property
    def rooms(self) -> dict[str, Room[M]]:
        """All rooms by name (a read-only view by convention; do not mutate)."""
        return self._rooms

    # -- membership ----------------------------------------------------------------------------
    def join(self, member: M, name: str) -> JoinResult:
        """Add `member` to room `name`.

        Raises RoomError(ROOM_FULL) when the room is at max_users, RoomError(NOT_PERMITTED)
        when the room does not exist and auto_create is off.
        """
        room = self._rooms.get(name)
        if room is None:
            if not self.auto_create:
                # The same answer as a private room: do not reveal whether a room exists.
                raise RoomError(ErrorCode.NOT_PERMITTED, f"cannot join room {name!r}")
            room = self.create(name)
        if member in room.members:
            return JoinResult(joined=False, first_member=False)
        if room.full:
            raise RoomError(
                ErrorCode.ROOM_FULL, f"room {name!r} is full ({room.max_users} members)"
            )
        first = not room.members
        room.members.add(member)
        self._memberships.setdefault(member, set()).add(name)
        for observe in self.observers:
            observe(member, name, True)
        return JoinResult(joined=True, first_member=first)

    def leave(self, member: M, name: str) -> LeaveResult:
        room = self._rooms.get(name)
        if room is None or member not in room.members:
            return LeaveResult(left=False, last_member=False, removed=False)
        room.members.discard(member)
        self._forget(member, name)
        last = not room.members
        # A private room never disappears by itself: the next join would re-create it public.
        removed = last and not room.persistent and not room.private
        if removed:
            del self._rooms[name]
        for observe in self.observers:
            observe(member, name, False)
        return LeaveResult(left=True, last_member=last, removed=removed)

    def leave_all(self, member: M) -> list[tuple[str, LeaveResult]]:
        """Remove `member` from every room (when its connection ends)."""
        return [(name, self.leave(member, name)) for name in sorted(self.rooms_of(member))]

    def rooms_of(self, member: M) -> frozenset[str]:
        return frozenset(self._memberships.get(member, ()))

    def members_of(self, name: str) -> frozenset[M]:
        room = self._rooms.get(name)
        return frozenset(room.members) if room is not None else frozenset()

    def is_moderator(self, name: str, user_id: str | None) -> bool:
        room = self._rooms.get(name)
        return room is not None and user_id is not None and user_id in room.moderators

    def room_count(self, member: M) -> int:
        """Number of rooms `member` is in."""
        names = self._memberships.get(member)
        return len(names) if names is not None else 0

    def member_count(self) -> int:
        """Number of members with at least one room."""
        return len(self._memberships)

    def _forget(self, member: M, name: str) -> None:
        names = self._memberships.get(member)
        if names is not None:
            names.discard(name)
            if not names:
                del self._memberships[member]

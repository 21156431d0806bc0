"""Presence rules, sans-IO: who is in a room, as user-level entries, and what changes of it
members are told (docs/presence.md).

Nothing here does I/O or imports trio; the engine part (`trio_rt/_engine/presence.py`) and the
stores
(`MemoryPresence` in `_presence.py`, `RedisPresence` in `trio_rt/redis/_presence.py`) use it.

- An *entry* is one user in one room on one server: its key (`user_key`: the user id, or the
  connection id for an anonymous connection), how many of its connections are in the room
  there, and its public info. A store adds the entries of every server: a user with three tabs
  on two servers is ONE member with ``connections == 3``.
- `check_info`: the public info the app's hook returns: a JSON object of bounded size, or None.
- `LocalTally`: this server's entries, kept in step with room membership (each join/leave of a
  connection), and which of them must be written to the store (`take_dirty`).
- `apply_sync` / `prune_expired` / `StoreState`: THE presence algorithm over plain dicts: the
  memory store runs it as is, and the Redis store's Lua scripts do the same steps (the
  contract tests hold both to it).
- `EventBatcher`: the join/leave events of one server, coalesced per room (the last state of
  a user in an interval wins; a join and a leave of the same user in one interval cancel),
  bounded per room with the named overflow policy ``"resync"``: past `max_batch` users the
  room's batch drops its details and tells members to query presence again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "DEFAULT_MAX_INFO_BYTES",
    "EventBatcher",
    "LocalTally",
    "PresenceBatch",
    "PresenceEntry",
    "PresenceResult",
    "PresenceStats",
    "PresenceTransition",
    "PresenceUpdate",
    "StoreState",
    "aggregate",
    "apply_sync",
    "check_info",
    "check_server_id",
    "decode_payload",
    "entry_field",
    "field_key",
    "prune_expired",
    "user_key",
]

DEFAULT_MAX_INFO_BYTES: Final = 512
FIELD_SEPARATOR: Final = "\x1f"  # between server id and user key in a store's field


def user_key(user_id: str | None, connection_id: str) -> str:
    """The key of a connection's presence entry: its user (``u:<id>``), or itself when it is
    anonymous (``a:<connection id>``: each anonymous connection is a member of its own)."""
    return f"u:{user_id}" if user_id is not None else f"a:{connection_id}"


def check_server_id(server_id: str) -> str:
    """`server_id` if a store can use it in a field (non-empty, no U+001F); ValueError else."""
    if not isinstance(server_id, str) or not server_id or FIELD_SEPARATOR in server_id:
        raise ValueError(f"server_id must be a non-empty string without U+001F: {server_id!r}")
    return server_id


def entry_field(server_id: str, key: str) -> str:
    """The store's field of one server's entry for one user key."""
    return f"{server_id}{FIELD_SEPARATOR}{key}"


def field_key(field_name: str) -> str:
    """The user key of a store field (what follows the server id)."""
    return field_name.split(FIELD_SEPARATOR, 1)[1]


def check_info(info: object, max_bytes: int = DEFAULT_MAX_INFO_BYTES) -> dict[str, Any] | None:
    """The public info of a connection as the app's hook returned it, checked: None, or a dict
    that encodes to JSON of at most `max_bytes` bytes. ValueError (TypeError for a wrong kind)
    otherwise: the info goes to every member who asks, so it must stay small and plain."""
    if info is None:
        return None
    if not isinstance(info, dict):
        raise TypeError(f"presence info must be a dict or None, not {type(info).__name__}")
    try:
        encoded = json.dumps(info, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"presence info must be JSON: {exc}") from None
    size = len(encoded.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ValueError(f"presence info is {size} bytes of JSON, more than {max_bytes}")
    return info


@dataclass(frozen=True, slots=True)
class PresenceStats:
    """A room's presence counts: distinct users (anonymous connections count one each), open
    connections, and the room's presence version (grows with every join and leave)."""

    users: int
    connections: int
    version: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"users": self.users, "connections": self.connections, "version": self.version}


@dataclass(frozen=True, slots=True)
class PresenceEntry:
    """One member of a room, across servers: its user id (None: an anonymous connection), how
    many connections it has in the room, and its public info (the app's hook; may be None)."""

    user_id: str | None
    connections: int
    info: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "connections": self.connections, "info": self.info}


@dataclass(frozen=True, slots=True)
class PresenceTransition:
    """A user appeared in a room (on its first server) or disappeared (from its last: left,
    or every entry of it expired), with the room's presence version after the change."""

    joined: bool
    key: str
    user_id: str | None
    info: dict[str, Any] | None
    version: int


@dataclass(frozen=True, slots=True)
class PresenceUpdate:
    """One server's entry for one user key in one room: `connections` 0 removes it."""

    key: str
    user_id: str | None
    connections: int
    info: dict[str, Any] | None = None

    def payload(self) -> str:
        """What a store keeps beside the count: the user id and the info, as JSON."""
        return json.dumps({"user_id": self.user_id, "info": self.info}, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class PresenceResult:
    """What a store answers: the room's counts after the call, the users that joined or left
    through it (its own writes, and the entries of dead servers it pruned on the way), and,
    for `members`, the members (None: the room has more users than the limit: counts only)."""

    stats: PresenceStats
    transitions: list[PresenceTransition] = field(default_factory=list)
    members: list[PresenceEntry] | None = None


def decode_payload(raw: str | bytes) -> tuple[str | None, dict[str, Any] | None]:
    """(user_id, info) of a stored payload (`PresenceUpdate.payload`)."""
    data = json.loads(raw)
    return data.get("user_id"), data.get("info")


def aggregate(entries: Iterable[tuple[str, int, str | bytes]]) -> list[PresenceEntry]:
    """Members from the stored (field, count, payload) of every live server entry: one per user
    key, counts summed; the info of the first entry seen. Sorted by user id (anonymous last)."""
    users: dict[str, list[Any]] = {}
    for field_name, count, payload in entries:
        key = field_key(field_name)
        found = users.get(key)
        if found is None:
            user_id, info = decode_payload(payload)
            users[key] = [user_id, count, info]
        else:
            found[1] += count
    members = [PresenceEntry(u, n, i) for u, n, i in users.values()]
    members.sort(key=lambda e: (e.user_id is None, e.user_id or ""))
    return members


# -- the store algorithm over plain dicts (MemoryPresence; the Lua scripts mirror it) ------------
@dataclass(slots=True)
class StoreState:
    """One room's presence in a store: per field (server + user key) its count, payload and
    deadline; per user key the number of server entries; the connection total; the version."""

    counts: dict[str, int] = field(default_factory=dict)
    payloads: dict[str, str] = field(default_factory=dict)
    deadlines: dict[str, float] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)
    connections: int = 0
    version: int = 0

    def stats(self) -> PresenceStats:
        return PresenceStats(len(self.users), self.connections, self.version)


def _transition(state: StoreState, joined: bool, key: str, payload: str) -> PresenceTransition:
    state.version += 1
    user_id, info = decode_payload(payload)
    return PresenceTransition(joined, key, user_id, info, state.version)


def _remove(state: StoreState, field_name: str, out: list[PresenceTransition]) -> None:
    count = state.counts.pop(field_name)
    payload = state.payloads.pop(field_name)
    del state.deadlines[field_name]
    state.connections -= count
    key = field_key(field_name)
    left = state.users[key] - 1
    if left <= 0:
        del state.users[key]
        out.append(_transition(state, False, key, payload))
    else:
        state.users[key] = left


def prune_expired(state: StoreState, now: float, out: list[PresenceTransition]) -> None:
    """Remove the entries whose deadline is at or before `now` (their server stopped
    refreshing them: it died), appending the users that left with them to `out`."""
    expired = sorted(f for f, deadline in state.deadlines.items() if deadline <= now)
    for field_name in expired:
        _remove(state, field_name, out)


def apply_sync(
    state: StoreState,
    server_id: str,
    updates: Iterable[PresenceUpdate],
    deadline: float,
    out: list[PresenceTransition],
) -> None:
    """Write one server's entries (count 0: remove), each kept until `deadline`; append the
    users that joined (their first entry on any server) or left (their last) to `out`."""
    for update in updates:
        field_name = entry_field(server_id, update.key)
        old = state.counts.get(field_name, 0)
        if update.connections > 0:
            payload = update.payload()
            state.counts[field_name] = update.connections
            state.payloads[field_name] = payload
            state.deadlines[field_name] = deadline
            state.connections += update.connections - old
            if old == 0:
                servers = state.users.get(update.key, 0) + 1
                state.users[update.key] = servers
                if servers == 1:
                    out.append(_transition(state, True, update.key, payload))
        elif old > 0:
            _remove(state, field_name, out)


# -- this server's entries ------------------------------------------------------------------
class LocalTally:
    """This server's presence entries: room -> user key -> [connections, user id, info].

    `add` / `remove` follow room membership, one connection at a time; a change of an entry
    marks it dirty until `take_dirty` hands it to the writer. Sync, no I/O."""

    def __init__(self) -> None:
        self.rooms: dict[str, dict[str, list[Any]]] = {}
        self._dirty: dict[tuple[str, str], None] = {}  # insertion-ordered set

    def add(self, room: str, key: str, user_id: str | None, info: dict[str, Any] | None) -> int:
        """One more connection of `key` in `room`; returns its count on this server. The info
        given with its first connection stays (later ones keep it)."""
        entries = self.rooms.setdefault(room, {})
        entry = entries.get(key)
        if entry is None:
            entry = entries[key] = [0, user_id, info]
        entry[0] += 1
        self._dirty[(room, key)] = None
        return int(entry[0])

    def remove(self, room: str, key: str) -> int:
        """One connection of `key` fewer in `room`; returns its count left (0: entry gone)."""
        entries = self.rooms.get(room)
        entry = entries.get(key) if entries is not None else None
        if entries is None or entry is None:
            return 0
        entry[0] -= 1
        self._dirty[(room, key)] = None
        if entry[0] > 0:
            return int(entry[0])
        del entries[key]
        if not entries:
            del self.rooms[room]
        return 0

    def has(self, room: str, key: str) -> bool:
        entries = self.rooms.get(room)
        return entries is not None and key in entries

    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    def update(self, room: str, key: str) -> PresenceUpdate:
        """The store update that writes the current state of `key` in `room` (0: removed)."""
        entries = self.rooms.get(room)
        entry = entries.get(key) if entries is not None else None
        if entry is None:
            return PresenceUpdate(key, None, 0)
        return PresenceUpdate(key, entry[1], entry[0], entry[2])

    def take_dirty(self) -> dict[str, list[PresenceUpdate]]:
        """The changed entries since the last call, per room, as store updates."""
        dirty, self._dirty = self._dirty, {}
        out: dict[str, list[PresenceUpdate]] = {}
        for room, key in dirty:
            out.setdefault(room, []).append(self.update(room, key))
        return out

    def mark(self, room: str, key: str) -> None:
        """Mark an entry dirty again (its write failed: it is written with the next batch)."""
        self._dirty[(room, key)] = None

    def all_updates(self) -> dict[str, list[PresenceUpdate]]:
        """Every entry of this server, per room (a heartbeat rewrites them all)."""
        return {
            room: [PresenceUpdate(k, e[1], e[0], e[2]) for k, e in entries.items()]
            for room, entries in self.rooms.items()
        }


# -- events ------------------------------------------------------------------------------------
@dataclass(slots=True)
class PresenceBatch:
    """A room's coalesced events of one interval: the users that joined and left (by key, the
    last state wins), or `resync` when the batch overflowed."""

    room: str
    joins: dict[str, PresenceTransition] = field(default_factory=dict)
    leaves: dict[str, PresenceTransition] = field(default_factory=dict)
    resync: bool = False
    version: int = 0

    def to_json(self) -> dict[str, Any]:
        """The ``presence_diff`` server message."""
        if self.resync:
            return {"type": "presence_diff", "room": self.room, "resync": True,
                    "version": self.version}  # fmt: skip
        return {
            "type": "presence_diff",
            "room": self.room,
            "joins": [
                {"user_id": t.user_id, "info": t.info, "version": t.version}
                for t in self.joins.values()
            ],
            "leaves": [{"user_id": t.user_id, "version": t.version} for t in self.leaves.values()],
            "version": self.version,
        }


class EventBatcher:
    """Join/leave events per room, coalesced until `take` (see the module docstring).

    Overflow policy ``"resync"``: a room with more than `max_batch` users changed in one interval
    sends one ``presence_diff`` with ``resync: true`` (no details) instead: members query
    `presence` again. At most `max_rooms` rooms wait; a transition for another room beyond that
    is dropped and counted in `dropped` (its members see it in the next query)."""

    def __init__(self, max_batch: int = 100, max_rooms: int = 10_000) -> None:
        self.max_batch = max_batch
        self.max_rooms = max_rooms
        self._rooms: dict[str, PresenceBatch] = {}
        self.dropped = 0
        self.resyncs = 0

    def __bool__(self) -> bool:
        return bool(self._rooms)

    def add(self, room: str, transition: PresenceTransition) -> None:
        batch = self._rooms.get(room)
        if batch is None:
            if len(self._rooms) >= self.max_rooms:
                self.dropped += 1
                return
            batch = self._rooms[room] = PresenceBatch(room)
        batch.version = max(batch.version, transition.version)
        if batch.resync:
            return
        key = transition.key
        if transition.joined:
            if batch.leaves.pop(key, None) is None:
                batch.joins[key] = transition
            # else: left and came back within the interval: nothing changed for members
        elif batch.joins.pop(key, None) is None:
            batch.leaves[key] = transition
        if len(batch.joins) + len(batch.leaves) > self.max_batch:
            batch.joins.clear()
            batch.leaves.clear()
            batch.resync = True
            self.resyncs += 1

    def take(self) -> list[PresenceBatch]:
        """The batches with something to say, oldest room first; the batcher is empty after."""
        batches, self._rooms = self._rooms, {}
        return [b for b in batches.values() if b.resync or b.joins or b.leaves]

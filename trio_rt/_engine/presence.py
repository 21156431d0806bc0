"""Presence: who is in a room, across servers (docs/presence.md).

- `PresenceManager`: the seam a presence store implements (one room's entries of every
  server: write this server's, read the members or the counts, prune the entries of dead
  servers); `MemoryPresence` here (one process, or several managers in it), `RedisPresence`
  (trio_rt/redis/_presence.py) across servers. tests/redis/test_presence_contract.py holds both to
  the same contract.
- `PresenceService`: the engine part. It follows this server's room membership
  (`WebSocketManager.observe_membership`, sync) in a `LocalTally`, and ONE task of the
  manager's service nursery writes what changed to the store (coalesced: many joins of one
  user in one room between two writes are one write) and, every `heartbeat_interval`,
  rewrites every entry of this server with a fresh deadline (`ttl`): the entries of a server
  that died stop being refreshed and expire by themselves. A second task publishes the
  join/leave events (``presence_diff``, rooms chosen by `events`), coalesced per room per
  `event_interval` and bounded (`EventBatcher`, overflow policy ``"resync"``), through the
  broker to the members on every server. It handles the ``presence`` and
  ``presence_stats`` commands (a member of the room, or a ``presence`` grant on
  ``room:<name>``), refusing the member list above `max_members` (``too_large``, with the
  counts).

Ownership: both tasks run in the manager's service nursery (`add_service`) and end with it;
the last writes (this server's connections, all gone by then in a graceful shutdown) are
flushed shielded, bounded by the manager's `close_timeout`. A crash leaves the entries to
expire after `ttl`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import trio

from .._core.checks import int_problem, number_problem, require
from .._core.errors import ErrorCode, RoomError
from .._core.outbox import OutboundMessage
from .._core.presence_rules import (
    DEFAULT_MAX_INFO_BYTES,
    EventBatcher,
    LocalTally,
    PresenceBatch,
    PresenceEntry,
    PresenceResult,
    PresenceStats,
    PresenceTransition,
    PresenceUpdate,
    StoreState,
    aggregate,
    apply_sync,
    check_info,
    check_server_id,
    prune_expired,
    user_key,
)
from .._core.protocol import PresenceQuery, PresenceStatsQuery, encode, error_message, reply

if TYPE_CHECKING:
    from .connection import Connection
    from .manager import WebSocketManager

__all__ = [
    "MemoryPresence",
    "PresenceEntry",
    "PresenceManager",
    "PresenceResult",
    "PresenceService",
    "PresenceStats",
]

log = logging.getLogger("trio_rt.presence")

InfoHook = Callable[["Connection"], "dict[str, Any] | None"]


class PresenceManager(Protocol):
    """A presence store: every server's entries of every room (see docs/presence.md).

    Each call first prunes the room's entries whose deadline passed (their server died) and
    reports the users that left with them in `PresenceResult.transitions`, with its own. A
    user's first entry in a room (on any server) is a join, its last a leave; each bumps the
    room's version. Raises the store's error (e.g. `RedisUnavailable`) when it cannot answer.
    """

    async def sync(
        self, room: str, server_id: str, updates: Sequence[PresenceUpdate], ttl: float
    ) -> PresenceResult:
        """Write `server_id`'s entries of `room` (``connections == 0``: remove), each kept for
        `ttl` seconds unless written again."""
        ...

    async def members(self, room: str, limit: int) -> PresenceResult:
        """The room's counts and members; members None when more than `limit` users."""
        ...

    async def stats(self, room: str) -> PresenceResult:
        """The room's counts."""
        ...

    async def aclose(self) -> None:
        """Release the store's connections (idempotent)."""
        ...


class MemoryPresence:
    """A `PresenceManager` in this process: the managers sharing it see each other's entries.

    `clock` (seconds, default `time.monotonic`) decides when an entry expires."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._rooms: dict[str, StoreState] = {}
        self._versions: dict[str, int] = {}  # rooms emptied: their version goes on from here

    def _state(self, room: str) -> StoreState:
        state = self._rooms.get(room)
        if state is None:
            state = self._rooms[room] = StoreState(version=self._versions.pop(room, 0))
        return state

    def _done(self, room: str, state: StoreState, out: list[PresenceTransition]) -> PresenceResult:
        stats = state.stats()
        if not state.counts:
            self._rooms.pop(room, None)
            if state.version:
                self._versions[room] = state.version
        return PresenceResult(stats, out)

    async def sync(
        self, room: str, server_id: str, updates: Sequence[PresenceUpdate], ttl: float
    ) -> PresenceResult:
        check_server_id(server_id)
        await trio.lowlevel.checkpoint()
        now = self._clock()
        state = self._state(room)
        out: list[PresenceTransition] = []
        prune_expired(state, now, out)
        apply_sync(state, server_id, updates, now + ttl, out)
        return self._done(room, state, out)

    async def members(self, room: str, limit: int) -> PresenceResult:
        result = await self.stats(room)
        if result.stats.users > limit:
            return result
        state = self._rooms.get(room)
        if state is None:
            return PresenceResult(result.stats, result.transitions, [])
        entries = [(f, n, state.payloads[f]) for f, n in state.counts.items()]
        return PresenceResult(result.stats, result.transitions, aggregate(entries))

    async def stats(self, room: str) -> PresenceResult:
        await trio.lowlevel.checkpoint()
        state = self._rooms.get(room)
        if state is None:
            return PresenceResult(PresenceStats(0, 0, self._versions.get(room, 0)))
        out: list[PresenceTransition] = []
        prune_expired(state, self._clock(), out)
        return self._done(room, state, out)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class PresenceService:
    """Presence for one `WebSocketManager` (see the module docstring); attaches itself when
    built: ``PresenceService(manager, RedisPresence(url))`` (default store: a
    `MemoryPresence` of its own, for a single server).

    Options (ValueError / TypeError when wrong):

    - `info`: ``info(conn) -> dict | None``, the public info of a user (e.g. a display name
      from its claims), called for its first connection in a room on this server; checked by
      `check_info` (a JSON object of at most `max_info_bytes`); a hook that raises or returns
      a bad value is logged and the user's info is None;
    - `rooms`: which rooms have presence (None: every room);
    - `events`: which rooms send ``presence_diff`` events to their members (True, False, or a
      predicate; the same on every server);
    - `ttl`: how long an entry lives without a heartbeat (a dead server's entries are gone
      within it); `heartbeat_interval` (default ``ttl / 3``) how often this server rewrites
      its entries;
    - `event_interval`: the coalescing window of events; `max_event_batch`: users changed per
      room per window before the batch becomes a ``resync``;
    - `max_members`: above this many users, ``presence`` answers ``too_large`` with the counts
      and no events are sent for the room.
    """

    def __init__(
        self,
        manager: WebSocketManager,
        store: PresenceManager | None = None,
        *,
        info: InfoHook | None = None,
        rooms: Callable[[str], bool] | None = None,
        events: bool | Callable[[str], bool] = False,
        ttl: float = 30.0,
        heartbeat_interval: float | None = None,
        event_interval: float = 0.1,
        max_event_batch: int = 100,
        max_members: int = 1000,
        max_info_bytes: int = DEFAULT_MAX_INFO_BYTES,
    ) -> None:
        if heartbeat_interval is None and isinstance(ttl, int | float):
            heartbeat_interval = ttl / 3
        require(
            number_problem("ttl", ttl),
            number_problem("heartbeat_interval", heartbeat_interval),
            number_problem("event_interval", event_interval, at_least=0),
            int_problem("max_event_batch", max_event_batch),
            int_problem("max_members", max_members),
            int_problem("max_info_bytes", max_info_bytes),
        )
        assert heartbeat_interval is not None
        if heartbeat_interval >= ttl:
            raise ValueError(
                f"heartbeat_interval must be shorter than ttl ({heartbeat_interval} >= {ttl})"
            )
        if info is not None and not callable(info):
            raise TypeError("info must be a function of the connection")
        check_server_id(manager.server_id)
        self.manager = manager
        self.store: PresenceManager = store if store is not None else MemoryPresence()
        self.ttl = float(ttl)
        self.heartbeat_interval = float(heartbeat_interval)
        self.event_interval = float(event_interval)
        self.max_members = max_members
        self.max_info_bytes = max_info_bytes
        self._info = info
        self._rooms = rooms
        self._events = events
        self.channel = f"{manager.options.channel_prefix}:presence"
        self.tally = LocalTally()
        self.batcher = EventBatcher(max_event_batch)
        self._keys: dict[tuple[str, str], str] = {}  # (connection id, room) -> its user key
        self._wake = trio.Event()  # the writer: something is dirty
        self._events_wake = trio.Event()  # the publisher: a batch is waiting
        self._passes = 0  # write passes started / finished: `presence` waits for its writes
        self._passes_done = 0
        self._pass_finished = trio.Event()
        self._running = False
        # counters, read by WebSocketMetrics
        self.events_published = 0
        self.heartbeats = 0
        self.write_errors = 0
        self.events_delivered = 0
        manager.attach_presence(self)
        manager.observe_membership(self._on_membership)
        manager.add_command(PresenceQuery, self.presence_command)
        manager.add_command(PresenceStatsQuery, self.stats_command)
        manager.add_service(self.run)

    # -- what the app and the server API call ---------------------------------------------------
    def enabled(self, room: str) -> bool:
        """Does `room` have presence?"""
        return self._rooms is None or self._rooms(room)

    def events_enabled(self, room: str) -> bool:
        """Do `room`'s members get ``presence_diff`` events?"""
        events = self._events
        return events(room) if callable(events) else bool(events)

    async def members(self, room: str) -> PresenceResult:
        """`room`'s counts and members across servers (members None above `max_members`).
        This server's own changes are written first (a connection sees its own join).
        Raises the store's error."""
        await self._written(room)
        result = await self.store.members(room, self.max_members)
        self._report(room, result)
        return result

    async def stats(self, room: str) -> PresenceStats:
        """`room`'s counts across servers. Raises the store's error."""
        await self._written(room)
        result = await self.store.stats(room)
        self._report(room, result)
        return result.stats

    def totals(self) -> dict[str, int]:
        """This server's presence, summed over rooms (metrics: no label per room)."""
        rooms = self.tally.rooms
        entries = sum(len(e) for e in rooms.values())
        connections = sum(int(v[0]) for e in rooms.values() for v in e.values())
        largest = max((len(e) for e in rooms.values()), default=0)
        return {
            "rooms": len(rooms),
            "users": entries,
            "connections": connections,
            "largest_room_users": largest,
            "events_published": self.events_published,
            "events_delivered": self.events_delivered,
            "event_resyncs": self.batcher.resyncs,
            "events_dropped": self.batcher.dropped,
            "write_errors": self.write_errors,
        }

    # -- membership (sync: called by the room registry) -----------------------------------------
    def _on_membership(self, conn: Connection, room: str, joined: bool) -> None:
        if not self.enabled(room):
            return
        if joined:
            key = user_key(conn.user_id, conn.id)
            self._keys[(conn.id, room)] = key
            info = None if self.tally.has(room, key) else self._info_of(conn)
            self.tally.add(room, key, conn.user_id, info)
        else:
            found = self._keys.pop((conn.id, room), None)
            if found is None:
                return
            self.tally.remove(room, found)
        self._wake.set()

    def _info_of(self, conn: Connection) -> dict[str, Any] | None:
        if self._info is None:
            return None
        try:
            return check_info(self._info(conn), self.max_info_bytes)
        except Exception:
            log.exception("presence info hook failed for %r; its info is None", conn)
            return None

    # -- the commands ---------------------------------------------------------------------------
    async def _check_access(self, conn: Connection, room: str) -> None:
        if room in self.manager.rooms_of(conn):
            return
        if await self.manager.authorize(conn, f"room:{room}", "presence"):
            return
        raise RoomError(ErrorCode.NOT_IN_ROOM, f"join room {room!r} to see who is in it")

    async def presence_command(self, conn: Connection, command: PresenceQuery) -> None:
        """``presence``: the members across servers, or ``too_large`` with the counts."""
        await self._check_access(conn, command.room)
        result = await self.members(command.room)
        stats = result.stats
        if result.members is None:
            await conn.send(
                error_message(
                    ErrorCode.TOO_LARGE,
                    f"room {command.room!r} has {stats.users} users, more than the "
                    f"{self.max_members} presence lists; ask presence_stats",
                    request_id=command.request_id,
                    room=command.room,
                    **stats.to_json(),
                )
            )
            return
        await conn.send(
            reply(
                "presence",
                command.request_id,
                room=command.room,
                members=[m.to_json() for m in result.members],
                **stats.to_json(),
            )
        )

    async def stats_command(self, conn: Connection, command: PresenceStatsQuery) -> None:
        """``presence_stats``: the counts across servers."""
        await self._check_access(conn, command.room)
        stats = await self.stats(command.room)
        await conn.send(
            reply("presence_stats", command.request_id, room=command.room, **stats.to_json())
        )

    # -- the tasks ------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The service: listens for events, writes and heartbeats until cancelled; then the
        last writes, shielded and bounded (`close_timeout`)."""
        await self.manager.listen(self.channel, self._on_event)
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._publish_loop)
                task_status.started()
                await self._write_loop()
        finally:
            self._running = False
            self._pass_finished.set()  # nobody waits for a writer that is gone
            self.manager.stop_listening(self.channel)
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self.manager.options.close_timeout):
                    if self.tally.dirty:
                        await self._write(self.tally.take_dirty())
                    await self._publish(self.batcher.take())
                # What was not written in time expires after ttl.
                with trio.move_on_after(self.manager.options.close_timeout):
                    await self.store.aclose()

    async def _write_loop(self) -> None:
        next_beat = trio.current_time() + self.heartbeat_interval
        retry_at: float | None = None  # after a failed write: not before this
        while True:
            if retry_at is None:
                with trio.move_on_at(next_beat):
                    while not self.tally.dirty:
                        await self._wake.wait()
                        self._wake = trio.Event()
            else:
                await trio.sleep_until(min(next_beat, retry_at))
            now = trio.current_time()
            batch = self.tally.take_dirty()
            if now >= next_beat:
                # The heartbeat: every entry of this server, written again with a new deadline.
                next_beat = now + self.heartbeat_interval
                self.heartbeats += 1
                for room, updates in self.tally.all_updates().items():
                    written = {u.key for u in batch.get(room, ())}
                    batch.setdefault(room, []).extend(u for u in updates if u.key not in written)
            ok = await self._write(batch)
            retry_at = None if ok else trio.current_time() + min(1.0, self.heartbeat_interval)

    async def _write(self, batch: dict[str, list[PresenceUpdate]]) -> bool:
        """Write `batch` (room -> updates), rooms concurrently (pipelined on one connection);
        a failed room's keys are marked dirty again. True when every room was written."""
        self._passes += 1
        failed: list[str] = []

        async def one(room: str, updates: list[PresenceUpdate]) -> None:
            try:
                result = await self.store.sync(room, self.manager.server_id, updates, self.ttl)
            except Exception as exc:
                failed.append(room)
                for update in updates:
                    self.tally.mark(room, update.key)
                self.write_errors += 1
                log.warning("presence write of room %r failed (%r); retrying", room, exc)
            else:
                self._report(room, result)

        try:
            async with trio.open_nursery() as nursery:
                for room, updates in batch.items():
                    nursery.start_soon(one, room, updates)
        finally:
            self._passes_done += 1
            self._pass_finished.set()
            self._pass_finished = trio.Event()
        return not failed

    async def _written(self, room: str) -> None:
        """Wait until this server's changes to `room` made before this call are written (a
        write pass that started after them finished, successfully or not)."""
        if not self.tally.dirty or not self._running:
            await trio.lowlevel.checkpoint()
            return
        target = self._passes + 1
        self._wake.set()
        while self._passes_done < target and self._running:
            await self._pass_finished.wait()

    def _report(self, room: str, result: PresenceResult) -> None:
        """Queue the events of what a store call changed (rooms with events, not too large)."""
        if not result.transitions or not self.events_enabled(room):
            return
        if result.stats.users > self.max_members:
            return
        for transition in result.transitions:
            self.batcher.add(room, transition)
        self._events_wake.set()

    async def _publish_loop(self) -> None:
        while True:
            await self._events_wake.wait()
            self._events_wake = trio.Event()
            if self.event_interval:
                await trio.sleep(self.event_interval)  # the coalescing window
            await self._publish(self.batcher.take())

    async def _publish(self, batches: list[PresenceBatch]) -> None:
        for batch in batches:
            try:
                await self.manager.broker.publish(self.channel, encode(batch.to_json()))
            except Exception as exc:
                log.warning("presence events of room %r not published (%r)", batch.room, exc)
            else:
                self.events_published += 1

    def _on_event(self, data: bytes) -> None:
        """A ``presence_diff`` from any server (this one too): to this server's members."""
        try:
            room = json.loads(data)["room"]
        except (ValueError, KeyError, TypeError):
            log.warning("malformed presence event dropped")
            return
        members = self.manager.members_of(room)
        if not members:
            return
        message = OutboundMessage(data)
        cork = self.manager.begin_fan_out()
        for conn in members:
            conn.send_encoded(message, cork)
        self.events_delivered += len(members)

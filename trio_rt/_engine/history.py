"""RoomHistory: room messages kept in a stream, with positions, history pages and recovery.

Given to the manager (``WebSocketManager(history=RoomHistory(store, sequencer))``), it makes
every `broadcast_to_room` to a room with history (all rooms, or those `rooms` selects):

1. take the next position of the stream ``room:<name>`` from the sequencer;
2. add ``"room"`` and ``"position": {"offset", "epoch"}`` to the message;
3. store it (the store's `append`), and only then publish it: whatever a client receives can
   be recovered, and a server that missed it (a hole in its order, a broker break) reads it
   from the store (`_engine/room_order.py`).

Clients that come back send the last position they saw with `join_room` (``since``) and get
what they missed, or ``recovered: false`` and refetch with `history`. The contract is in
docs/protocol.md ("Positions and recovery").
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .._core.checks import int_problem, number_problem, require
from .._core.protocol import encode
from .streams import (
    MemorySequencer,
    MemoryStreamStore,
    Recovery,
    Sequencer,
    StreamEntry,
    StreamPosition,
    StreamStore,
    recover,
    warn_memory_behind_broker,
)

__all__ = ["RoomHistory"]

log = logging.getLogger("trio_rt.history")


class RoomHistory:
    """Positions and stored history for room messages.

    `store` defaults to a `MemoryStreamStore`, `sequencer` to a `MemorySequencer` (both for
    one process). For several servers use `CassandraStreamStore` and `RedisSequencer`.
    `rooms(name) -> bool` selects the rooms with history (default: every room).
    `recovery_limit`: more missed messages than this and recovery answers ``too_many``.
    `max_page`: the most messages one `history` request returns.
    `reorder_window`: how long (seconds) a server holds a message behind a missing offset
    before it gives up on the hole (two servers published at the same moment and the later
    offset landed first); 0 delivers everything at once, in arrival order.
    `reorder_limit`: the most messages held per room; one more and the hole is skipped (and
    read from the store afterwards: what is found is delivered late).
    `write_timeout`: how long (seconds) a hole the store does not have yet may still be being
    written (its message was allocated before the held one, and its store write is slow): the
    server reads the store again every `reorder_window` and skips the hole only once the
    oldest held message has waited this long. A write slower than that is delivered late (out
    of order, once). Holes that are never written (a sender killed mid-write, a failed write)
    hold the room's messages this long. At most `reorder_window` has the old behaviour (one
    read decides).
    `heal_timeout`: how long (seconds) a server keeps trying to read a hole, or what it missed
    during a broker break, from the store; then the hole is skipped and the room's members get
    a ``room_gap`` message (docs/protocol.md).
    """

    def __init__(
        self,
        store: StreamStore | None = None,
        sequencer: Sequencer | None = None,
        *,
        rooms: Callable[[str], bool] | None = None,
        recovery_limit: int = 1000,
        max_page: int = 100,
        reorder_window: float = 0.2,
        reorder_limit: int = 1000,
        heal_timeout: float = 5.0,
        write_timeout: float = 2.0,
    ) -> None:
        require(
            int_problem("recovery_limit", recovery_limit),
            int_problem("max_page", max_page),
            int_problem("reorder_limit", reorder_limit),
            number_problem("reorder_window", reorder_window, at_least=0),  # 0: arrival order
            number_problem("heal_timeout", heal_timeout),
            number_problem("write_timeout", write_timeout, at_least=0),
        )
        self.store = store if store is not None else MemoryStreamStore()
        self.sequencer = sequencer if sequencer is not None else MemorySequencer()
        self.sequencer.attach(self.store)
        self._rooms = rooms
        self.recovery_limit = recovery_limit
        self.max_page = max_page
        self.reorder_window = float(reorder_window)
        self.reorder_limit = reorder_limit
        self.heal_timeout = float(heal_timeout)
        self.write_timeout = float(write_timeout)

    def services(self) -> list[Callable[..., Awaitable[None]]]:
        """Tasks to run in the manager's nursery (a Redis sequencer's connection)."""
        run = getattr(self.sequencer, "run", None)
        return [run] if run is not None else []

    def check_deployment(self, broker: object) -> None:
        """Warn when the parts cannot work across servers: a broker shared between processes
        with a memory sequencer or store (each process would number its own messages)."""
        warn_memory_behind_broker(
            log,
            "RoomHistory",
            broker,
            self.sequencer,
            self.store,
            "CassandraStreamStore and RedisSequencer",
        )

    def enabled(self, room: str) -> bool:
        return self._rooms is None or self._rooms(room)

    @staticmethod
    def stream(room: str) -> str:
        return f"room:{room}"

    async def record(self, room: str, data: dict[str, Any]) -> tuple[StreamPosition, bytes]:
        """Allocate, store, and return the position and the encoded message to publish.

        Raises what the store raises (nothing is published then).
        """
        stream = self.stream(room)
        allocation = await self.sequencer.next(stream)
        message = {**data, "room": room, "position": allocation.position.to_json()}
        payload = encode(message)
        await self.store.append(stream, allocation, payload.decode("utf-8"))
        return allocation.position, payload

    async def current(self, room: str) -> StreamPosition:
        return await self.sequencer.current(self.stream(room))

    async def recover(self, room: str, since: StreamPosition) -> Recovery:
        stream = self.stream(room)
        current = await self.sequencer.current(stream)
        return await recover(self.store, stream, since, current, limit=self.recovery_limit)

    async def page(
        self,
        room: str,
        limit: int,
        before: StreamPosition | None,
        after: StreamPosition | None = None,
    ) -> tuple[list[StreamEntry], StreamPosition]:
        """Up to `limit` messages (at most `max_page`), oldest first: the latest, those just
        before `before`, or those just after `after`. A position of another epoch returns
        nothing."""
        stream = self.stream(room)
        current = await self.sequencer.current(stream)
        given = before if before is not None else after
        if given is not None and given.epoch != current.epoch:
            return [], current
        if after is not None:
            entries = await self.store.read(
                stream, current.epoch, after.offset, min(limit, self.max_page)
            )
            return entries, current
        entries = await self.store.latest(
            stream,
            current.epoch,
            min(limit, self.max_page),
            before.offset if before is not None else None,
        )
        return entries, current

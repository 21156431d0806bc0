"""Stream positions on the client's side, and the duplicate rule. Sans-IO.

A stream here is what the server numbers with positions (offset + epoch): a room with history,
or a table subscription. For each one the client keeps the position to resume from (sent as
``since`` when it joins again or renews) and the offsets it received in the current epoch, so
that a message it already has is dropped while a late one is delivered. The browser client's
PositionTracker (trio_rt/static/trio_rt.js) applies the same rule.
"""

from __future__ import annotations

import heapq
import math
from typing import Any, TypeAlias, TypeGuard

__all__ = ["RECENT_OFFSETS", "Position", "SeenOffsets", "StreamPositions", "is_position", "later"]

RECENT_OFFSETS = 1024  # offsets remembered per stream and epoch (see SeenOffsets)

Position: TypeAlias = dict[str, Any]
"""A stream position as the server sends it: ``{"offset": int, "epoch": str}``."""


def is_position(value: object) -> TypeGuard[Position]:
    """True for a dict with an int `offset` and a str `epoch` (what a position must carry)."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("offset"), int)
        and isinstance(value.get("epoch"), str)
    )


def later(known: Position | None, position: Position) -> Position:
    """The position to keep: `position`, unless `known` is greater in the same epoch (a late
    message does not move a stream's position back)."""
    if known is not None and known.get("epoch") == position["epoch"]:
        offset = known.get("offset")
        if isinstance(offset, int) and offset >= position["offset"]:
            return known
    return position


class SeenOffsets:
    """The offsets of one stream's epoch (a room, a table subscription) this client received.

    The duplicate rule (the browser client's PositionTracker has the same): `add` is False for
    an offset this client already received in this epoch, replayed or live (a replay
    overlapping live delivery, a server repeating itself), and True for any other offset, also
    one lower than the greatest received: a *late* message (published during a join or a
    recovery, or delivered after the server's reorder window) is delivered. The positions in
    `room_joined` / `subscribed` replies mark nothing as received.

    Memory is bounded: the `RECENT_OFFSETS` greatest offsets received are remembered. Only when
    that window overflows does its smallest offset leave it and become the `floor`: offsets at
    or below the floor can no longer be told apart and count as received. Until then the floor
    is -inf.
    """

    __slots__ = ("_heap", "_offsets", "epoch", "floor")

    def __init__(self, epoch: str, floor: float = -math.inf) -> None:
        self.epoch = epoch
        self.floor = floor
        self._offsets: set[int] = set()
        self._heap: list[int] = []  # the same offsets, smallest first: the next to forget

    def add(self, offset: int) -> bool:
        """Record `offset` as received; False when it already was (a duplicate)."""
        if offset <= self.floor or offset in self._offsets:
            return False
        self._offsets.add(offset)
        heapq.heappush(self._heap, offset)
        if len(self._heap) > RECENT_OFFSETS:
            forgotten = heapq.heappop(self._heap)
            self._offsets.discard(forgotten)
            self.floor = max(self.floor, forgotten)
        return True


class StreamPositions:
    """Per stream (named by the caller: a room, a subscription's key): the position to resume
    from and the offsets received in its current epoch (`SeenOffsets`; a new epoch starts with
    none). Only `received` marks an offset as received: positions taken from a reply
    (`reset`, `catch_up`, `advance`) mark nothing."""

    __slots__ = ("_last", "_seen")

    def __init__(self) -> None:
        self._last: dict[str, Position] = {}
        self._seen: dict[str, SeenOffsets] = {}

    def position(self, stream: str) -> Position | None:
        """Where `stream` resumes from (``since``); None when nothing positioned it yet."""
        return self._last.get(stream)

    def received(self, stream: str, position: Position) -> bool:
        """A message at `position` arrived. False when this client already received that offset
        in that epoch (a duplicate: nothing changes); else the offset is recorded and the
        stream's position moves to it, never back (`later`)."""
        if not self._epoch(stream, position).add(position["offset"]):
            return False
        self.advance(stream, position)
        return True

    def advance(self, stream: str, position: Position) -> None:
        """Move the stream's position to `position` unless it is already further (`later`)."""
        self._last[stream] = later(self._last.get(stream), position)

    def reset(self, stream: str, position: Position) -> None:
        """A join's reply: everything up to `position` was sent, resume exactly from there.
        (An offset at or below it that was still being written when the client joined may
        come later: it is delivered.)"""
        self._last[stream] = position
        self._epoch(stream, position)

    def catch_up(self, stream: str, position: Position) -> None:
        """A renewal's reply: the epoch is `position`'s (a new one starts empty) and the
        position moves forward to it, never back."""
        self._epoch(stream, position)
        self.advance(stream, position)

    def forget(self, stream: str) -> None:
        """Drop the stream's position and offsets (it starts afresh if it comes back)."""
        self._last.pop(stream, None)
        self._seen.pop(stream, None)

    def _epoch(self, stream: str, position: Position) -> SeenOffsets:
        """The received offsets of `stream` in `position`'s epoch (a new epoch starts empty)."""
        seen = self._seen.get(stream)
        if seen is None or seen.epoch != position["epoch"]:
            seen = self._seen[stream] = SeenOffsets(position["epoch"])
        return seen

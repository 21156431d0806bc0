"""What servers send each other through a Broker, sans-IO.

A broadcast is serialized once into an envelope: a small JSON header line, then the client
payload untouched. Every server that receives it frames the payload once for its local recipients.

Exactly once per member: a broadcast to rooms [r1, ..., rk] is published on each room's channel.
A server that receives it on ri's channel delivers to its local members of ri that are in none of
r1..r(i-1). A member of several target rooms is thus served by exactly one channel (the first
of its rooms in the list), whatever server it is on, without any shared state.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Envelope", "decode_envelope", "encode_envelope", "recipients"]

M = TypeVar("M", bound=Hashable)

KIND_MESSAGE = "m"
KIND_KICK = "kick"
KIND_SERVER = "server"  # a message for the servers themselves (cross_server_message)


@dataclass(frozen=True, slots=True)
class Envelope:
    """`rooms` is None for a broadcast to every client. `exclude` is a connection id."""

    payload: bytes
    rooms: tuple[str, ...] | None = None
    exclude: str | None = None
    kind: str = KIND_MESSAGE
    user_id: str | None = None  # kind == "kick": whose connections leave the room
    origin: str | None = None  # the publishing server's id (metrics, cross_server_message)
    offset: int | None = None  # the stream offset of a room message with history (recovery)
    epoch: str | None = None  # the epoch of that offset (receivers order by offset per epoch)


def encode_envelope(env: Envelope) -> bytes:
    header: dict[str, object] = {}
    if env.rooms is not None:
        header["r"] = list(env.rooms)
    if env.exclude is not None:
        header["x"] = env.exclude
    if env.kind != KIND_MESSAGE:
        header["k"] = env.kind
    if env.user_id is not None:
        header["u"] = env.user_id
    if env.origin is not None:
        header["o"] = env.origin
    if env.offset is not None:
        header["p"] = env.offset
    if env.epoch is not None:
        header["e"] = env.epoch
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + env.payload


def decode_envelope(data: bytes) -> Envelope:
    """Raises ValueError when `data` is not an envelope (another app on the same channel)."""
    head, sep, payload = bytes(data).partition(b"\n")
    if not sep:
        raise ValueError("not a trio_rt envelope: no header line")
    header = json.loads(head)
    if not isinstance(header, dict):
        raise ValueError("not a trio_rt envelope: header is not an object")
    rooms = header.get("r")
    if rooms is not None and (
        not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms)
    ):
        raise ValueError("bad envelope rooms")
    exclude = header.get("x")
    kind = header.get("k", KIND_MESSAGE)
    user_id = header.get("u")
    origin = header.get("o")
    epoch = header.get("e")
    for name, value in (("x", exclude), ("u", user_id), ("o", origin), ("e", epoch)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"bad envelope field {name!r}")
    if not isinstance(kind, str):
        raise ValueError("bad envelope kind")
    offset = header.get("p")
    if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int)):
        raise ValueError("bad envelope offset")
    return Envelope(
        payload=payload,
        rooms=tuple(rooms) if rooms is not None else None,
        exclude=exclude,
        kind=kind,
        user_id=user_id,
        origin=origin,
        offset=offset,
        epoch=epoch,
    )


def unique_rooms(rooms: Iterable[str]) -> tuple[str, ...]:
    """Target rooms without repeats, first occurrence kept (order decides who serves whom)."""
    return tuple(dict.fromkeys(rooms))


def recipients(
    env: Envelope,
    room: str,
    members_of: Callable[[str], Iterable[M]],
    rooms_of: Callable[[M], Iterable[str]],
) -> list[M]:
    """Local members that the copy of `env` received on `room`'s channel must reach."""
    assert env.rooms is not None
    try:
        index = env.rooms.index(room)
    except ValueError:
        return []
    earlier = frozenset(env.rooms[:index])
    members = members_of(room)
    if not earlier:
        return list(members)
    return [m for m in members if earlier.isdisjoint(rooms_of(m))]

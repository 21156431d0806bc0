"""Acknowledged publishes, sans-IO: the ``publish`` message, the idempotency rule and its seam.

A client sends ``{"type": "publish", "room": R, "data": D, "id": I}``; the server answers
``{"type": "ack", "room": R, "position": P, "id": I}`` once the message is stored (a room with
history) and published, or an ``error`` (docs/protocol.md, "Acknowledged publishes"). The I/O
is `trio_rt._engine.publish.Publisher`'s; the rules are here, with no trio, socket or Redis:

- `parse_publish`: the message's fields, each refusal a `ProtocolError` naming the field;
- `idempotency_key`: the key of one publish id of one user (of one connection when
  anonymous): length-prefixed parts, so no two (identity, id) pairs share a key;
- `Pending` / `Done` and `encode_record` / `decode_record`: what the idempotency store holds
  for a key: a publish in flight (claimed with a random token) or its outcome (`AckResult`);
- `IdempotencyStore`: the seam (claim / complete / release), and `MemoryIdempotencyStore`,
  its implementation for one process (`trio_rt.redis.RedisIdempotencyStore` shares it
  between servers). One contract test module runs against both
  (tests/redis/test_idempotency_contract.py).

The rule: the first attempt of an id claims its key (pending, with a TTL that outlives the
attempt), stores and publishes, then replaces the claim with the outcome, kept for the
idempotency window. A retry within the window finds the outcome and gets the SAME ack,
without storing or delivering anything; a retry that finds the claim waits for the outcome.
A failed attempt that stored nothing releases its claim, so a retry is a first attempt again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from .errors import ErrorCode, ProtocolError, RequestId
from .protocol import StreamPosition, parse_position, validate_room_name

__all__ = [
    "AckOutcome",
    "AckResult",
    "Done",
    "IdempotencyStore",
    "MemoryIdempotencyStore",
    "Pending",
    "PublishRequest",
    "api_idempotency_key",
    "decode_record",
    "encode_record",
    "idempotency_key",
    "parse_publish",
]


class AckOutcome(StrEnum):
    """How a publish ended (the label of the acks metric: a closed set)."""

    ACKED = "acked"  # stored and published: ack
    DUPLICATE = "duplicate"  # a retry of an acked id: the same ack, nothing stored or sent
    REFUSED = "refused"  # invalid, not permitted, id reused for another room: error
    FAILED = "failed"  # nothing stored (sequencer, store or idempotency store failed): error
    UNCONFIRMED = "unconfirmed"  # stored, the broker did not confirm: error, a retry acks
    IN_PROGRESS = "in_progress"  # another attempt of the id did not finish in time: error


@dataclass(frozen=True, slots=True)
class PublishRequest:
    """A parsed ``publish``: `data` (any JSON value) for `room`, named by `publish_id`."""

    room: str
    data: Any
    publish_id: str | int


def parse_publish(message: dict[str, Any], request_id: RequestId) -> PublishRequest:
    """The fields of a ``publish`` message (its `type` and `id` were checked by
    `_protocol.parse`). ProtocolError (``invalid_field``) for a missing id, room or data."""
    if request_id is None:
        raise ProtocolError(
            ErrorCode.INVALID_FIELD, "'id' is required: it makes a resent publish idempotent"
        )
    room = validate_room_name(message.get("room"), request_id=request_id)
    if "data" not in message:
        raise ProtocolError(ErrorCode.INVALID_FIELD, "missing 'data'", request_id=request_id)
    return PublishRequest(room, message["data"], request_id)


def idempotency_key(user_id: str | None, connection_id: str, publish_id: str | int) -> str:
    """``u:<len>:<user>`` (``c:<len>:<connection>`` when anonymous), then ``:s:`` or ``:i:``
    (a string or an integer id: ``"1"`` and ``1`` are different ids), ``<len>:<id>``."""
    if user_id is not None:
        identity = f"u:{len(user_id)}:{user_id}"
    else:
        identity = f"c:{len(connection_id)}:{connection_id}"
    kind = "i" if isinstance(publish_id, int) else "s"
    text = str(publish_id)
    return f"{identity}:{kind}:{len(text)}:{text}"


def api_idempotency_key(client: str, key: str) -> str:
    """The key of an HTTP API publish: ``k:<len>:<API client>:s:<len>:<Idempotency-Key>``
    (``k:``: never a user's or a connection's key)."""
    return f"k:{len(client)}:{client}:s:{len(key)}:{key}"


@dataclass(frozen=True, slots=True)
class AckResult:
    """What an ack says: the room and the stored position (None: a room without history)."""

    room: str
    position: StreamPosition | None

    def ack_fields(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "position": self.position.to_json() if self.position is not None else None,
        }


@dataclass(frozen=True, slots=True)
class Pending:
    """A publish of this key is in flight; `token` is its attempt's."""

    token: str


@dataclass(frozen=True, slots=True)
class Done:
    """A publish of this key was stored: every retry gets `result`."""

    result: AckResult


Record = Pending | Done


def encode_record(record: Record) -> str:
    """The text a store keeps for a key: ``p:<token>`` or ``d:<json>``."""
    if isinstance(record, Pending):
        return "p:" + record.token
    result = record.result
    body: dict[str, Any] = {"room": result.room}
    if result.position is not None:
        body["position"] = result.position.to_json()
    return "d:" + json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def decode_record(text: str) -> Record:
    """The inverse of `encode_record`; ValueError for anything else."""
    if text.startswith("p:"):
        return Pending(text[2:])
    if text.startswith("d:"):
        body = json.loads(text[2:])
        if not isinstance(body, dict) or not isinstance(body.get("room"), str):
            raise ValueError("not an idempotency record")
        raw = body.get("position")
        try:
            position = None if raw is None else parse_position(raw, field="position")
        except ProtocolError as exc:
            raise ValueError(f"not an idempotency record: {exc.message}") from None
        return Done(AckResult(body["room"], position))
    raise ValueError("not an idempotency record")


@runtime_checkable
class IdempotencyStore(Protocol):
    """Where the outcome of each publish id is kept for the idempotency window, shared by
    every server that takes publishes for the same users.

    Contract (tests/redis/test_idempotency_contract.py runs it against every implementation):

    - `claim(key, token, ttl)`: atomically, if `key` holds nothing, store ``Pending(token)``
      for `ttl` seconds and return None (the caller owns the key); otherwise return what it
      holds (``Pending`` of another attempt, or ``Done``), changing nothing.
    - `complete(key, token, result, ttl)`: if `key` still holds ``Pending(token)``, replace
      it with ``Done(result)`` for `ttl` seconds and return True; otherwise change nothing and
      return False (the claim expired and maybe another attempt took the key).
    - `release(key, token)`: if `key` still holds ``Pending(token)``, remove it.
    - Expired records are gone: a claim after the TTL finds nothing.

    Each method raises on a store failure (a Redis error): the caller decides (a failed claim
    refuses the publish: exactly once is not given up silently).
    """

    async def claim(self, key: str, token: str, ttl: float) -> Record | None: ...

    async def complete(self, key: str, token: str, result: AckResult, ttl: float) -> bool: ...

    async def release(self, key: str, token: str) -> None: ...


class MemoryIdempotencyStore:
    """`IdempotencyStore` in this process (one server, tests). `clock` (monotonic seconds) is
    injectable; expired records are dropped when touched and by `prune`, called by `claim`
    every `prune_every` calls, so memory stays bounded by the records of one window."""

    def __init__(
        self, *, clock: Callable[[], float] | None = None, prune_every: int = 10_000
    ) -> None:
        self._clock: Callable[[], float] = clock if clock is not None else time.monotonic
        self._records: dict[str, tuple[str, float]] = {}  # key -> (encoded record, expires)
        self._prune_every = prune_every
        self._calls = 0

    def __len__(self) -> int:
        return len(self._records)

    def _get(self, key: str, now: float) -> str | None:
        entry = self._records.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._records[key]
            return None
        return entry[0]

    async def claim(self, key: str, token: str, ttl: float) -> Record | None:
        now = self._clock()
        self._calls += 1
        if self._calls >= self._prune_every:
            self._calls = 0
            self.prune(now)
        current = self._get(key, now)
        if current is not None:
            return decode_record(current)
        self._records[key] = (encode_record(Pending(token)), now + ttl)
        return None

    async def complete(self, key: str, token: str, result: AckResult, ttl: float) -> bool:
        now = self._clock()
        if self._get(key, now) != encode_record(Pending(token)):
            return False
        self._records[key] = (encode_record(Done(result)), now + ttl)
        return True

    async def release(self, key: str, token: str) -> None:
        if self._get(key, self._clock()) == encode_record(Pending(token)):
            del self._records[key]

    def prune(self, now: float | None = None) -> int:
        """Drop the expired records; returns how many."""
        if now is None:
            now = self._clock()
        expired = [key for key, (_, expires) in self._records.items() if expires <= now]
        for key in expired:
            del self._records[key]
        return len(expired)

"""The CDC agent's wire format, sans-IO: JSON lines both ways (docs/cdc.md, "Wire format").

Agent -> consumer, one JSON object per line:

- ``{"type": "hello", "protocol": 1, "node": ..., "cassandra": ..., "checkpoint": {...},
  "resend_until": {...}}`` first, once per connection (``resend_until``: no batch was sent
  past this (segment, position) before);
- ``{"type": "batch", "seq": n, "segment": id, "position": offset, "changes": [...]}``: the
  changes read up to that commit-log position, in commit-log order (possibly none: the
  position moved over other tables' mutations);
- ``{"type": "stats", "cdc_raw_bytes": ..., "cdc_total_space": ..., "alert": bool, ...}``
  about once a second;
- ``{"type": "error", "message": ...}`` then the agent closes (another consumer is
  connected).

Consumer -> agent: ``{"type": "ack", "seq": n}`` once every change of batches up to `n` is
stored. The agent then writes its checkpoint; a new connection starts at the checkpoint, so
a batch that was not acknowledged comes again (the consumer de-duplicates with `change_id`).

Nothing here does I/O or imports trio or the driver.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .._core.errors import TrioRTError

__all__ = [
    "MAX_LINE",
    "PROTOCOL",
    "AgentBatch",
    "AgentHello",
    "AgentRefused",
    "AgentStats",
    "CdcChange",
    "ChangeKind",
    "LineReader",
    "WireError",
    "change_id",
    "encode_ack",
    "parse_message",
]

PROTOCOL = 1
#: The longest line accepted (a batch of up to ``--batch-max`` changes).
MAX_LINE = 256 * 1024 * 1024
#: What an agent reports for a row: INSERT sets the row's primary-key liveness, UPDATE does
#: not (so re-inserting an existing row is an insert too); the deletions by their scope.
Operation = Literal["insert", "update", "delete", "partition_delete", "range_delete"]
OPERATIONS: frozenset[str] = frozenset(
    {"insert", "update", "delete", "partition_delete", "range_delete"}
)
#: The class of a change for de-duplication: a write (insert or update) or a deletion.
ChangeKind = Literal["write", "delete", "partition_delete", "range_delete"]


class WireError(TrioRTError):
    """A message that does not follow the wire format."""


@dataclass(frozen=True, slots=True)
class CdcChange:
    """One change as the agent reports it (values as JSON, in trio_rt's conventions for the
    types a `Table` supports).

    `key` holds the primary key (the partition key alone for a partition deletion, a range
    deletion or a static row); `cells` the columns written (``None``: the cell was deleted);
    `partial` the non-frozen collections changed element by element (``{"add": [...],
    "remove": [...]}``, ``{"put": {...}, "remove": [...]}``), whose whole value the mutation
    does not carry; `ts` the write timestamp (microseconds, the greatest in the row); `ttl`
    and `expires` (seconds since the epoch) for a write with a TTL; `range` the bounds of a
    range deletion.
    """

    keyspace: str
    table: str
    op: Operation
    key: dict[str, Any]
    ts: int
    cells: dict[str, Any] = field(default_factory=dict)
    partial: dict[str, Any] = field(default_factory=dict)
    ttl: int | None = None
    expires: int | None = None
    range: dict[str, Any] | None = None
    static: bool = False

    @property
    def kind(self) -> ChangeKind:
        if self.op in ("insert", "update"):
            return "write"
        return self.op  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class AgentHello:
    node: str
    protocol: int
    cassandra: str
    checkpoint: dict[str, Any]
    #: (segment, position): no batch was sent past it before this connection (by this agent
    #: or an earlier run of it), so a batch that starts at or after it holds no change the
    #: consumer may have stored before. None: not said (every batch may be a re-send).
    resend_until: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class AgentBatch:
    seq: int
    segment: int
    position: int
    changes: list[CdcChange]


@dataclass(frozen=True, slots=True)
class AgentStats:
    cdc_raw_bytes: int
    cdc_total_space: int
    segments: int
    alert: bool
    skipped_unknown_table: int
    errors: int
    checkpoint: dict[str, Any]
    #: Mutations the agent could not decode with an unchanged schema, skipped (each logged
    #: as an ERROR by the agent).
    skipped_undecodable: int = 0
    #: The agent's reading loop so far: listings of cdc_raw (on a file linked or removed,
    #: and at its fallback poll; without a watch, every read), segment files opened (an
    #: uncompressed segment stays open from one read to the next) and reads (passes that
    #: found something durable to read). Older agents do not send them: 0.
    listings: int = 0
    segment_opens: int = 0
    reads: int = 0
    #: Writes of the agent's checkpoint file so far: at most one per ``--checkpoint-ms``,
    #: plus one per finished segment (optional, since December 4; 0 from older agents).
    checkpoint_writes: int = 0


@dataclass(frozen=True, slots=True)
class AgentRefused:
    message: str


AgentMessage = AgentHello | AgentBatch | AgentStats | AgentRefused


def _int(body: Mapping[str, Any], name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(f"{name!r} must be an integer, got {value!r}")
    return value


def _str(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise WireError(f"{name!r} must be a string, got {value!r}")
    return value


def _object(body: Mapping[str, Any], name: str, default: dict[str, Any] | None = None) -> Any:
    value = body.get(name, default)
    if not isinstance(value, dict):
        raise WireError(f"{name!r} must be an object, got {value!r}")
    return value


def _change(body: Any) -> CdcChange:
    if not isinstance(body, dict):
        raise WireError(f"a change must be an object, got {body!r}")
    op = _str(body, "op")
    if op not in OPERATIONS:
        raise WireError(f"unknown operation {op!r}")
    ttl = body.get("ttl")
    expires = body.get("expires")
    bounds = body.get("range")
    if op == "range_delete" and not isinstance(bounds, dict):
        raise WireError("a range_delete needs its 'range'")
    return CdcChange(
        keyspace=_str(body, "keyspace"),
        table=_str(body, "table"),
        op=op,  # type: ignore[arg-type]
        key=_object(body, "key"),
        ts=_int(body, "ts"),
        cells=_object(body, "cells", {}),
        partial=_object(body, "partial", {}),
        ttl=None if ttl is None else _int(body, "ttl"),
        expires=None if expires is None else _int(body, "expires"),
        range=bounds if isinstance(bounds, dict) else None,
        static=body.get("static") is True,
    )


def parse_message(line: bytes | str) -> AgentMessage:
    """One line from the agent; `WireError` when it is not a message of this protocol."""
    try:
        body = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise WireError("a message must be a JSON object")
    kind = body.get("type")
    if kind == "batch":
        changes = body.get("changes")
        if not isinstance(changes, list):
            raise WireError("'changes' must be an array")
        return AgentBatch(
            _int(body, "seq"),
            _int(body, "segment"),
            _int(body, "position"),
            [_change(c) for c in changes],
        )
    if kind == "stats":
        return AgentStats(
            _int(body, "cdc_raw_bytes"),
            _int(body, "cdc_total_space"),
            _int(body, "segments"),
            body.get("alert") is True,
            _int(body, "skipped_unknown_table"),
            _int(body, "errors"),
            _object(body, "checkpoint"),
            _int(body, "skipped_undecodable") if "skipped_undecodable" in body else 0,
            *(_int(body, name) if name in body else 0 for name in _READING),
        )
    if kind == "hello":
        protocol = _int(body, "protocol")
        if protocol != PROTOCOL:
            raise WireError(f"the agent speaks protocol {protocol}, this side {PROTOCOL}")
        resend_until = None
        if "resend_until" in body:
            bound = _object(body, "resend_until")
            resend_until = (_int(bound, "segment"), _int(bound, "position"))
        return AgentHello(
            _str(body, "node"),
            protocol,
            _str(body, "cassandra"),
            _object(body, "checkpoint"),
            resend_until,
        )
    if kind == "error":
        return AgentRefused(_str(body, "message"))
    raise WireError(f"unknown message type {kind!r}")


#: The stats of the agent's reading loop, optional in a stats message.
_READING = ("listings", "segment_opens", "reads", "checkpoint_writes")


def encode_ack(seq: int) -> bytes:
    """The acknowledgement of every batch up to `seq`."""
    return b'{"type":"ack","seq":%d}\n' % seq


class LineReader:
    """Bytes from the socket in, complete lines out (without the newline); a line longer
    than `max_line` raises `WireError` (the connection is then dropped)."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        lines = []
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end < 0:
                break
            lines.append(bytes(self._buffer[start:end]))
            start = end + 1
        del self._buffer[:start]
        if len(self._buffer) > self.max_line:
            raise WireError(f"a line longer than {self.max_line} bytes")
        return lines


def canonical_json(value: Any) -> str:
    """`value` as JSON with sorted keys and no spaces: equal values, equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def change_id(
    keyspace: str,
    table: str,
    kind: ChangeKind,
    timestamp: int,
    key: Mapping[str, Any],
    bounds: Mapping[str, Any] | None = None,
) -> str:
    """The identity of one change, the same on every replica and in every re-send: the table,
    the kind of change, the write timestamp and the key (canonical JSON; for a range deletion
    its bounds too). The outbox computes the same for the writes it captures."""
    text = "\n".join(
        [
            f"{keyspace}.{table}",
            kind,
            str(timestamp),
            canonical_json(dict(key)),
            "" if bounds is None else canonical_json(dict(bounds)),
        ]
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

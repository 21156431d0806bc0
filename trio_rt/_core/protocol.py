"""The wire protocol, sans-IO: parse client frames into commands, encode server messages.

Nothing here does I/O or imports trio or websockets; every function is tested without sockets.
See docs/protocol.md for the contract with clients.

Table-driven: `BUILTIN_COMMANDS` maps each built-in `type` to its command class, and each class
parses its own fields (`from_json`, small and independent). `parse` checks what every message
shares (JSON, an object, `id`, `type`), then looks the type up; a type not in the table is the
app's (`ClientMessage`). `BUILTIN_TYPES` is the table's keys. Every refusal is a `ProtocolError`
(the exception tree is in trio_rt/_core/errors.py); `reply` and `error_message` build what goes
back.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType
from typing import Any, ClassVar, Final

from .errors import ErrorCode, ProtocolError, RequestId

__all__ = [
    "BUILTIN_COMMANDS",
    "BUILTIN_TYPES",
    "MAX_ID_LENGTH",
    "MAX_ROOM_NAME_LENGTH",
    "MAX_TOKEN_LENGTH",
    "MAX_TYPE_LENGTH",
    "BuiltinCommand",
    "ClientMessage",
    "CloseCode",
    "Command",
    "ErrorCode",
    "History",
    "JoinRoom",
    "Kick",
    "LeaveRoom",
    "Ping",
    "PresenceQuery",
    "PresenceStatsQuery",
    "ProtocolError",
    "Refresh",
    "RequestId",
    "StreamPosition",
    "Subscribe",
    "Unsubscribe",
    "encode",
    "encode_text_frame",
    "error_message",
    "parse",
    "parse_position",
    "reply",
    "validate_room_name",
]

MAX_TYPE_LENGTH: Final = 64
MAX_ROOM_NAME_LENGTH: Final = 128
MAX_ID_LENGTH: Final = 128
MAX_TOKEN_LENGTH: Final = 8192  # a `refresh` token; TokenVerifier has its own (same default)
# Room names are identifiers shared with Redis channels, Cassandra keys and log lines: letters of
# any script, no whitespace (Python's \s: Unicode whitespace) and nothing that changes how text
# around it is shown: every control character (Unicode category Cc: C0, DEL and C1, U+0080-U+009F,
# where U+009B starts a terminal control sequence) and the bidi controls: embeddings and
# overrides U+202A-U+202E, isolates U+2066-U+2069, and the invisible direction marks U+200E,
# U+200F, U+061C (two names that look the same must be the same name; right-to-left names
# display correctly without marks). Joiners (U+200C/D) stay allowed: some scripts need them.
_ROOM_NAME_FORBIDDEN: Final = "\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_ROOM_NAME = re.compile(rf"[^\s{_ROOM_NAME_FORBIDDEN}]+")
_TYPE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]*")


class CloseCode(IntEnum):
    """WebSocket close codes trio_rt uses. 4000-4999 are private-use codes (RFC 6455 7.4.2)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down: reconnect elsewhere
    PROTOCOL_ERROR = 1002
    INVALID_DATA = 1007  # invalid UTF-8 (sent by websockets)
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009  # sent by websockets when a frame exceeds max_message_size
    INTERNAL_ERROR = 1011
    ABNORMAL = 1006  # never sent: reported when the TCP connection dropped without a close frame
    SLOW_CONSUMER = 4000  # the client did not read fast enough; its outbox overflowed
    HEARTBEAT_TIMEOUT = 4001  # no pong within heartbeat_timeout
    KICKED = 4002  # reserved: removed by the application
    FORBIDDEN = (
        4003  # authentication/authorization failure: do not reconnect with the same credentials
    )
    TOKEN_EXPIRED = 4004  # the connection's token expired without an in-band refresh
    RATE_LIMITED = 4029  # sustained abuse of the rate limits: reconnect later, slower


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """A parsed client message whose `type` is not a built-in: dispatched to the app's handler."""

    type: str
    data: dict[str, Any]
    request_id: RequestId = None


MAX_EPOCH_LENGTH: Final = 64
MAX_OFFSET: Final = 2**53  # positions travel as JSON numbers: JavaScript must hold them exactly


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """A place in a stream: entries with a greater `offset` in the same `epoch` come after it."""

    offset: int
    epoch: str

    def to_json(self) -> dict[str, Any]:
        return {"offset": self.offset, "epoch": self.epoch}


def parse_position(
    raw: object, *, field: str = "since", request_id: RequestId = None
) -> StreamPosition:
    """Validate a position sent by a client: ``{"offset": int >= 0, "epoch": str}``."""
    if not isinstance(raw, dict):
        raise ProtocolError(
            ErrorCode.INVALID_FIELD,
            f'\'{field}\' must be an object {{"offset": int, "epoch": str}}',
            request_id=request_id,
        )
    offset, epoch = raw.get("offset"), raw.get("epoch")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise ProtocolError(
            ErrorCode.INVALID_FIELD,
            f"'{field}.offset' must be an integer from 0 to 2^53",
            request_id=request_id,
        )
    if not isinstance(epoch, str) or not 0 < len(epoch) <= MAX_EPOCH_LENGTH:
        raise ProtocolError(
            ErrorCode.INVALID_FIELD,
            f"'{field}.epoch' must be a non-empty string of at most {MAX_EPOCH_LENGTH} characters",
            request_id=request_id,
        )
    extra = set(raw) - {"offset", "epoch"}
    if extra:
        raise ProtocolError(
            ErrorCode.INVALID_FIELD,
            f"'{field}' has unknown field(s): {', '.join(sorted(map(str, extra)))}",
            request_id=request_id,
        )
    return StreamPosition(offset, epoch)


def _optional_position(
    obj: dict[str, Any], name: str, request_id: RequestId
) -> StreamPosition | None:
    """The position in `obj[name]`, None when absent or null (see `parse_position`)."""
    raw = obj.get(name)
    return None if raw is None else parse_position(raw, field=name, request_id=request_id)


def _room(obj: dict[str, Any], request_id: RequestId) -> str:
    return validate_room_name(obj.get("room"), request_id=request_id)


# -- the built-in commands: each parses its own fields from the decoded object ----------------
# `from_json(obj, request_id)` gets the whole message (its `type` and `id` already checked) and
# raises ProtocolError naming the first field that is wrong.


@dataclass(frozen=True, slots=True)
class JoinRoom:
    TYPE: ClassVar[str] = "join_room"
    room: str
    request_id: RequestId = None
    since: StreamPosition | None = None  # recover what was missed after this position

    @classmethod
    def from_json(cls, obj: dict[str, Any], request_id: RequestId) -> JoinRoom:
        room = _room(obj, request_id)
        return cls(room, request_id, _optional_position(obj, "since", request_id))


@dataclass(frozen=True, slots=True)
class LeaveRoom:
    TYPE: ClassVar[str] = "leave_room"
    room: str
    request_id: RequestId = None

    @classmethod
    def from_json(cls, obj: dict[str, Any], request_id: RequestId) -> LeaveRoom:
        return cls(_room(obj, request_id), request_id)


@dataclass(frozen=True, slots=True)
class Ping:
    TYPE: ClassVar[str] = "ping"
    request_id: RequestId = None

    @classmethod
    def from_json(cls, obj: dict[str, Any], request_id: RequestId) -> Ping:
        return cls(request_id)


@dataclass(frozen=True, slots=True)
class Kick:
    """A moderator asks to remove every connection of `user_id` from `room`."""

    TYPE: ClassVar[str] = "kick"
    room: str
    user_id: str
    request_id: RequestId = None

    @classmethod
    def from_json(cls, obj: dict[str, Any], request_id: RequestId) -> Kick:
        room = _room(obj, request_id)
        user_id = obj.get("user_id")
        if not isinstance(user_id, str) or not user_id:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD,
                "'user_id' must be a non-empty string",
                request_id=request_id,
            )
        return cls(room, user_id, request_id)


MAX_HISTORY_LIMIT: Final = 1000
DEFAULT_HISTORY_LIMIT: Final = 50


@dataclass(frozen=True, slots=True)
class History:
    """Stored messages of a room: the latest `limit`, the `limit` before `before`, or the
    `limit` after `after` (at most one of the two)."""

    TYPE: ClassVar[str] = "history"
    room: str
    limit: int
    before: StreamPosition | None = None
    request_id: RequestId = None
    after: StreamPosition | None = None

    @classmethod
    def from_json(cls, obj: dict[str, Any], request_id: RequestId) -> History:
        room = _room(obj, request_id)
        limit = obj.get("limit", DEFAULT_HISTORY_LIMIT)
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= MAX_HISTORY_LIMIT
        ):
            raise ProtocolError(
                ErrorCode.INVALID_FIELD,
                f"'limit' must be an integer from 1 to {MAX_HISTORY_LIMIT}",
                request_id=request_id,
            )
        if obj.get("before") is not None and obj.get("after") is not None:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD,
                "give 'before' or 'after', not both",
                request_id=request_id,
            )
        before = _optional_position(obj, "before", request_id)
        after = _optional_position(obj, "after", request_id)
        return cls(room, limit, before, request_id, after)


MAX_TABLE_NAME_LENGTH: Final = 48
_TABLE_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Table changes matching `filters` (checked against the table by the change streams)."""

    TYPE: ClassVar[str] = "subscribe"
    table: str
    filters: dict[str, Any]
    since: StreamPosition | None = None
    request_id: RequestId = None

    @classmethod
    def from_json(cls, obj: dict[str, Any], request_id: RequestId) -> Subscribe:
        table = _checked_name(
            obj.get("table"),
            "table",
            MAX_TABLE_NAME_LENGTH,
            _TABLE_NAME,
            "be a table name: a lowercase letter, then lowercase letters, digits or '_'",
            request_id,
        )
        filters = obj.get("filters")
        if filters is None:
            filters = {}
        if not isinstance(filters, dict):
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, "'filters' must be an object", request_id=request_id
            )
        return cls(table, filters, _optional_position(obj, "since", request_id), request_id)


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    TYPE: ClassVar[str] = "unsubscribe"
    subscription: str
    request_id: RequestId = None

    @classmethod
    def from_json(cls, obj: dict[str, Any], request_id: RequestId) -> Unsubscribe:
        sid = obj.get("subscription")
        if not isinstance(sid, str) or not 0 < len(sid) <= MAX_ID_LENGTH:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD,
                "'subscription' must be a subscription id from a 'subscribed' reply",
                request_id=request_id,
            )
        return cls(sid, request_id)


@dataclass(frozen=True, slots=True)
class Refresh:
    """The client sends a fresh token for its connection (in-band re-authentication)."""

    TYPE: ClassVar[str] = "refresh"
    token: str = field(repr=False)
    request_id: RequestId = None

    @classmethod
    def from_json(cls, obj: dict[str, Any], request_id: RequestId) -> Refresh:
        token = obj.get("token")
        if not isinstance(token, str) or not token:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, "'token' must be a non-empty string", request_id=request_id
            )
        if len(token) > MAX_TOKEN_LENGTH:
            raise ProtocolError(
                ErrorCode.TOO_LARGE,
                f"'token' is longer than {MAX_TOKEN_LENGTH} characters",
                request_id=request_id,
            )
        return cls(token, request_id)


@dataclass(frozen=True, slots=True)
class PresenceQuery:
    """Who is in `room`, across servers (docs/presence.md); handled by `PresenceService`."""

    TYPE: ClassVar[str] = "presence"
    room: str
    request_id: RequestId = None

    @classmethod
    def from_json(cls, obj: dict[str, Any], request_id: RequestId) -> PresenceQuery:
        return cls(_room(obj, request_id), request_id)


@dataclass(frozen=True, slots=True)
class PresenceStatsQuery:
    """How many users and connections are in `room`, across servers (docs/presence.md)."""

    TYPE: ClassVar[str] = "presence_stats"
    room: str
    request_id: RequestId = None

    @classmethod
    def from_json(cls, obj: dict[str, Any], request_id: RequestId) -> PresenceStatsQuery:
        return cls(_room(obj, request_id), request_id)


BuiltinCommand = (
    JoinRoom
    | LeaveRoom
    | Ping
    | Kick
    | Refresh
    | History
    | Subscribe
    | Unsubscribe
    | PresenceQuery
    | PresenceStatsQuery
)
Command = BuiltinCommand | ClientMessage

BUILTIN_COMMANDS: Final[Mapping[str, type[BuiltinCommand]]] = MappingProxyType(
    {
        cls.TYPE: cls
        for cls in (
            JoinRoom,
            LeaveRoom,
            Ping,
            Kick,
            History,
            Subscribe,
            Unsubscribe,
            Refresh,
            PresenceQuery,
            PresenceStatsQuery,
        )
    }
)
"""The protocol's own message types, each with the class that parses it: the one table."""
BUILTIN_TYPES: Final = frozenset(BUILTIN_COMMANDS)


def _checked_name(
    value: object,
    field: str,
    max_length: int,
    pattern: re.Pattern[str],
    shape: str,
    request_id: RequestId,
) -> str:
    """`value` if it is a string of at most `max_length` matching `pattern`, else ProtocolError
    naming `field` and what was wrong (`shape` says what a valid value looks like)."""
    if not isinstance(value, str):
        raise ProtocolError(
            ErrorCode.INVALID_FIELD, f"'{field}' must be a string", request_id=request_id
        )
    if len(value) > max_length:
        raise ProtocolError(
            ErrorCode.TOO_LARGE,
            f"'{field}' is longer than {max_length} characters",
            request_id=request_id,
        )
    if not pattern.fullmatch(value):
        raise ProtocolError(
            ErrorCode.INVALID_FIELD, f"'{field}' must {shape}", request_id=request_id
        )
    return value


def validate_room_name(room: object, *, request_id: RequestId = None) -> str:
    """Return `room` if it is an acceptable room name, else raise ProtocolError."""
    return _checked_name(
        room,
        "room",
        MAX_ROOM_NAME_LENGTH,
        _ROOM_NAME,
        "be 1 or more characters without whitespace, control or bidi control characters",
        request_id,
    )


def _request_id(obj: dict[str, Any]) -> RequestId:
    rid = obj.get("id")
    if rid is None:
        return None
    # bool is an int subclass; an id of `true` is almost certainly a client bug.
    if isinstance(rid, bool) or not isinstance(rid, str | int):
        raise ProtocolError(ErrorCode.INVALID_FIELD, "'id' must be a string or an integer")
    if isinstance(rid, str) and len(rid) > MAX_ID_LENGTH:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"'id' is longer than {MAX_ID_LENGTH} characters")
    if isinstance(rid, int) and not -(2**53) <= rid <= 2**53:
        raise ProtocolError(ErrorCode.INVALID_FIELD, "'id' must fit in a JavaScript number")
    return rid


def parse(frame: str | bytes) -> Command:
    """Parse one client frame.

    Text frames carry one JSON object with a string `type`. Binary frames are refused. A type
    in `BUILTIN_COMMANDS` gives that command; any other valid type a `ClientMessage`.
    Raises ProtocolError describing what was wrong; the caller turns it into an `error` reply.
    """
    if isinstance(frame, bytes | bytearray | memoryview):
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_DATA, "binary frames are not supported; send JSON text frames"
        )
    try:
        obj = json.loads(frame, parse_float=_finite_float, parse_constant=_no_constant)
    except RecursionError:
        raise ProtocolError(ErrorCode.INVALID_JSON, "JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and int too long to convert
        raise ProtocolError(ErrorCode.INVALID_JSON, f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"a message must be a JSON object, not {_json_kind(obj)}",
        )
    request_id = _request_id(obj)
    mtype = obj.get("type")
    if mtype is None:
        raise ProtocolError(ErrorCode.MISSING_TYPE, "missing 'type'", request_id=request_id)
    mtype = _checked_name(
        mtype,
        "type",
        MAX_TYPE_LENGTH,
        _TYPE_NAME,
        "start with a letter and contain only letters, digits, '_', '.', ':', '-'",
        request_id,
    )
    command = BUILTIN_COMMANDS.get(mtype)
    if command is None:
        return ClientMessage(mtype, obj, request_id)
    return command.from_json(obj, request_id)


def _finite_float(text: str) -> float:
    # 1e400 would become inf: nothing the server could send back (encode refuses it).
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity, -Infinity: Python-only extensions


def _json_kind(obj: object) -> str:
    if isinstance(obj, list):
        return "an array"
    if isinstance(obj, str):
        return "a string"
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "a boolean"
    return "a number"


def encode(message: dict[str, Any]) -> bytes:
    """Serialize a server message to the UTF-8 bytes of one text frame's payload.

    Raises TypeError or ValueError for data JSON cannot represent (NaN is refused: browsers'
    JSON.parse rejects it). Strings with lone surrogates (a client may send "\\ud800") go out
    as JSON escapes, the way they came in: the frame stays valid UTF-8.
    """
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(
            message, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        ).encode("ascii")


def reply(type: str, request_id: RequestId, **fields: Any) -> dict[str, Any]:
    """A server message answering a request: ``{"type": type, **fields, "id": request_id}``.

    The `id` goes last, and only when the request had one (a client matches replies by it).
    Every reply to a request is built here: the built-in commands', extensions' (change
    streams) and `error_message`.
    """
    out: dict[str, Any] = {"type": type, **fields}
    if request_id is not None:
        out["id"] = request_id
    return out


def error_message(
    code: ErrorCode | str,
    message: str,
    *,
    request_id: RequestId = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build an `error` reply: `code`, `message`, the request's `id`, then `extra` fields
    (`retry_after` for rate_limited)."""
    out = reply("error", request_id, code=str(code), message=message)
    out.update(extra)
    return out


def encode_text_frame(payload: bytes) -> bytes:
    """Frame `payload` as one unmasked, uncompressed, final text frame (server to client).

    Server frames are never masked (RFC 6455 5.1), so without a negotiated extension these bytes
    are valid for every connection: a broadcast frames once, not once per recipient.
    """
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 65536:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + payload

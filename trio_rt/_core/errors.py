"""trio_rt's exceptions: one tree under `TrioRTError`, and the error codes clients see.

Sans-IO: nothing here imports trio, websockets, Redis or Cassandra. Every exception class trio_rt
defines derives from `TrioRTError`, so ``except trio_rt.TrioRTError`` catches what the library
raises on purpose (and nothing of Python's or a dependency's). Each class is importable from the
package named in brackets:

```text
TrioRTError                     the base (trio_rt)
├── ProtocolError               a client message is refused: the client gets an "error"
│   │                           reply with its code, message and the request's id;
│   │                           the connection stays open (trio_rt)
│   ├── RoomError               a room rule refused it: room_full, not_permitted,
│   │                           not_in_room (trio_rt)
│   └── PublishRefused          a `publish` was not done: refused, or unavailable
│                               (resend with the same id) (trio_rt)
├── AuthError                   a token is missing, malformed or invalid; reason is safe
│                               to show (trio_rt, with the "auth" extra)
├── BrokerUnavailable           Broker.publish could not reach the other servers in
│                               bounded time (trio_rt)
├── RedisError                  a Redis command failed (trio_rt.redis)
│   ├── RedisUnavailable        the connection failed or was lost: retrying later may
│   │   │                       succeed (`maybe_sent`: whether the command may have run)
│   │   └── RedisTimeout        no answer (or no connection) within the timeout
│   └── RedisReplyError         Redis answered with an error reply (`code`: ERR, NOSCRIPT,
│                               MOVED...)
├── Reject                      raised by a connection handler: refuse the WebSocket
│                               upgrade with an HTTP status (trio_rt)
├── HttpError                   a server API request refused with an HTTP status and
│                               error code (trio_rt._core.http_parse; answered, never raised
│                               to the app)
├── WireError                   a CDC agent's message does not follow the wire format
│                               (trio_rt.cdc; the agent's connection is dropped)
├── CassandraError              a Cassandra request failed (trio_rt.cassandra)
│   ├── CassandraUnavailable    transient: retrying later may succeed
│   │   └── CassandraTimeout
│   └── CassandraQueryError     the request is wrong as written
└── ClientError                 raised by WebSocketClient (trio_rt.client)
    ├── ClientClosed
    ├── QueueFull
    ├── ServerError             the server answered a request with an "error" reply
    ├── ProtocolViolation
    ├── HeartbeatTimeout
    └── ReceiveOverflow
```

Outside the tree, on purpose:

- A bad argument to a constructor (an option, a size, a timeout) raises ``ValueError`` (or
  ``TypeError`` for a wrong kind of object, e.g. a callback that is not async): a programming
  error found before anything runs. Counts and durations share one check and one wording
  (trio_rt/_core/checks.py).
- Cancellation, ``trio.TooSlowError`` from the caller's own deadlines, and websockets'
  ``ConnectionClosed`` from a raw connection keep their own types.
- ``trio_rt.testing.services.ServiceError`` (a ``RuntimeError``) belongs to the test-service
  launcher, not to the library.

`ProtocolError` and `RoomError` have one shape (`code`, `message`, `request_id`), so the server
answers both in one ``except`` branch; an app handler raises either to send a specific error.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ErrorCode", "ProtocolError", "RequestId", "RoomError", "TrioRTError"]

RequestId = str | int | None
"""The `id` a client put on a request (None: it sent none); every reply to it carries it back."""


class ErrorCode(StrEnum):
    """The `code` of an `error` reply. Clients can switch on these; they never change meaning."""

    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"  # valid JSON, but not an object
    MISSING_TYPE = "missing_type"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_FIELD = "invalid_field"  # a field is missing or has the wrong type or value
    UNSUPPORTED_DATA = "unsupported_data"  # binary frames
    TOO_LARGE = "too_large"
    ROOM_FULL = "room_full"
    NOT_IN_ROOM = "not_in_room"
    NOT_PERMITTED = "not_permitted"
    RATE_LIMITED = "rate_limited"  # carries `retry_after` (seconds)
    LIMIT_EXCEEDED = "limit_exceeded"  # a per-connection cap (rooms, subscriptions)
    # Not done now, may be later: resend the same request (a `publish` with the same id is
    # stored at most once); carries `retry_after` (seconds) when the server has a hint.
    UNAVAILABLE = "unavailable"
    INTERNAL_ERROR = "internal_error"


class TrioRTError(Exception):
    """The base of every exception trio_rt defines (the tree is in trio_rt/_core/errors.py)."""


class ProtocolError(TrioRTError):
    """A client message the server refuses: an `error` reply, never a closed connection.

    `code` is what clients switch on, `message` says what was wrong (it is sent to the client:
    never put secrets in it), `request_id` is the request's `id` when known (the server fills it
    in from the request otherwise).
    """

    def __init__(self, code: ErrorCode, message: str, *, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


class RoomError(ProtocolError):
    """A room operation that the room rules refuse (`code`: room_full, not_permitted,
    not_in_room). A `ProtocolError`: in a message handler it becomes the sender's `error`
    reply like any other."""

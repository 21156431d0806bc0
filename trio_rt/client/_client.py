"""A reconnecting Python client for trio_rt servers, on websockets' native Trio implementation.

::

    async with WebSocketClient("ws://127.0.0.1:3001/") as client:
        await client.join_room("chat:general")
        await client.send({"type": "chat_message", "payload": {"room": "chat:general"}})
        async for message in client:
            ...

The client owns its background tasks: they run in a nursery opened by ``async with`` and none of
them outlives the block. See docs/client.md for the full contract; the short version:

* ``send()`` queues the message in a bounded outbox; a writer task writes it while connected.
  Messages sent while disconnected are written, in order, after the next successful connect.
  Delivery is at most once: a message is written once and never resent.
* A reader task reads the socket all the time, whatever the app does, into a bounded receive
  buffer; iterate the client or call ``receive()`` to read it. When the app falls
  ``receive_buffer`` messages behind, the ``receive_overflow`` policy applies (``"reconnect"``:
  keep what was received, drop the connection, reconnect and recover once the app caught up;
  ``"drop_oldest"``; or ``"wait"``: stop reading meanwhile, the heartbeat bounding the wait).
* Liveness does not depend on the app or on websockets' flow control: the client pings every
  ``ping_interval`` seconds and drops the connection when no pong came within ``ping_timeout``;
  every connection's tasks (websockets' included) live in a nursery the client cancels when
  the connection ends, so a dead server always leads to a reconnect and ``aclose()`` is bounded.
* Lost connections are re-established with exponential backoff and jitter; rooms joined with
  ``join_room()`` are joined again on every new connection (with ``since``: missed messages are
  replayed), table subscriptions are renewed from their last position.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import heapq
import inspect
import json
import logging
import math
import random
import ssl as ssl_module
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal, NoReturn, Self, TypeAlias, TypeGuard, TypeVar

import trio
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus
from websockets.frames import CloseCode
from websockets.protocol import State
from websockets.trio.client import ClientConnection, connect
from websockets.uri import parse_uri

from ._errors import TrioRTError

__all__ = [
    "DEFAULT_FATAL_CLOSE_CODES",
    "DEFAULT_RETRYABLE_HTTP_STATUSES",
    "Backoff",
    "ClientClosed",
    "ClientError",
    "ClientEvent",
    "ClientState",
    "ClientStats",
    "ConnectInfo",
    "EventType",
    "HeartbeatTimeout",
    "OverflowPolicy",
    "ProtocolViolation",
    "QueueFull",
    "ReceiveOverflow",
    "ReceiveOverflowPolicy",
    "ServerError",
    "WebSocketClient",
    "default_is_fatal",
]

log = logging.getLogger("trio_rt.client")

Message: TypeAlias = dict[str, Any]
"""A decoded server message: a JSON object whose ``type`` is a string."""

HeadersLike: TypeAlias = Mapping[str, str] | Sequence[tuple[str, str]]
HeadersProvider: TypeAlias = Callable[[], Awaitable[HeadersLike] | HeadersLike]
TokenProvider: TypeAlias = Callable[[], Awaitable[str] | str]
OverflowPolicy: TypeAlias = Literal["raise", "drop_oldest", "wait"]
ReceiveOverflowPolicy: TypeAlias = Literal["reconnect", "drop_oldest", "wait"]
EventType: TypeAlias = Literal[
    "connected", "disconnected", "reconnecting", "rejoin_failed", "recovery_failed", "closed"
]
EVENT_TYPES: Final[frozenset[str]] = frozenset(
    {"connected", "disconnected", "reconnecting", "rejoin_failed", "recovery_failed", "closed"}
)

DEFAULT_FATAL_CLOSE_CODES: Final[frozenset[int]] = frozenset(
    {
        1002,  # protocol error: the same client would make the same mistake again
        1003,  # unsupported data
        1007,  # invalid payload data
        1008,  # policy violation
        1010,  # mandatory extension missing
        4003,  # trio_rt: unauthorized / forbidden
    }
)
"""Close codes after which the client gives up instead of reconnecting.

Everything else reconnects, notably 1000, 1001 (server going away / restarting), 1006 (the TCP
connection dropped), 1011, 1012-1014, 4000 (slow consumer), 4001 (heartbeat timeout), 4004 (token
expired: the reconnect takes a fresh token from the provider) and 4029 (rate-limited abuse)."""

DEFAULT_RETRYABLE_HTTP_STATUSES: Final[frozenset[int]] = frozenset({408, 429, 500, 502, 503, 504})
"""HTTP statuses of a refused handshake that are worth retrying (server full, restarting...).
Any other status (401, 403, 404...) is fatal."""


# ---------------------------------------------------------------------------------------------
# Errors


class ClientError(TrioRTError):
    """Base class of the errors raised by :class:`WebSocketClient` (a `trio_rt.TrioRTError`)."""


class ClientClosed(ClientError):
    """The client is closed: it will not send, receive or reconnect any more.

    ``error`` is what ended it: ``None`` after a normal close (``aclose()`` or the end of the
    ``async with`` block); otherwise the fatal error (a ``ConnectionClosed`` with a fatal close
    code, an ``InvalidStatus`` for a refused handshake...) or, when reconnection gave up, the
    error of the last failed attempt. It is also the exception's ``__cause__``.
    """

    def __init__(
        self, message: str = "the client is closed", *, error: BaseException | None = None
    ):
        super().__init__(message)
        self.error = error
        self.__cause__ = error

    @property
    def close_code(self) -> int | None:
        """The close code the server sent, when a closed connection ended the client."""
        if isinstance(self.error, ConnectionClosed) and self.error.rcvd is not None:
            return self.error.rcvd.code
        return None

    @property
    def http_status(self) -> int | None:
        """The HTTP status, when a refused handshake ended the client."""
        if isinstance(self.error, InvalidStatus):
            return self.error.response.status_code
        return None


class QueueFull(ClientError):
    """``send()`` while disconnected, the outbox full, and the overflow policy ``"raise"``.

    The message was not queued."""


class ServerError(ClientError):
    """The server answered a request (``join_room``, ``leave_room``) with an ``error`` message.

    ``code`` is the server's error code (``room_full``, ``not_permitted``, ``invalid_field``...),
    ``reply`` the whole message. Also used when the server removes the client from a room
    whose join was still pending (``code`` is then the message type, e.g. ``room_kicked``)."""

    def __init__(self, reply: Mapping[str, Any], *, room: str | None = None) -> None:
        self.reply: Message = dict(reply)
        code = reply.get("code")
        self.code: str = code if isinstance(code, str) else str(reply.get("type", "error"))
        message = reply.get("message")
        self.message: str = message if isinstance(message, str) else ""
        self.room = room
        where = f" (room {room!r})" if room is not None else ""
        super().__init__(
            f"{self.code}: {self.message}{where}" if self.message else self.code + where
        )


class ProtocolViolation(ClientError):
    """The server did not follow the trio_rt protocol (e.g. its first message was not a
    ``welcome``). Fatal by default: reconnecting would meet the same server."""


class HeartbeatTimeout(ClientError):
    """The client dropped a connection because no pong answered its ping within
    ``ping_timeout`` seconds (a dead server, a cut or black-holed network path).

    It is the ``error`` of the ``disconnected`` and ``reconnecting`` events; the client always
    reconnects after it (``is_fatal`` is not consulted)."""


class ReceiveOverflow(ClientError):
    """The client dropped a connection because the app fell ``receive_buffer`` messages behind
    (``receive_overflow="reconnect"``). What was received stays buffered; the client
    reconnects once the app has read the buffer down to half, and rooms with history and
    table subscriptions recover what was missed meanwhile. Never fatal."""


# ---------------------------------------------------------------------------------------------
# Pure pieces: backoff arithmetic, error classification, encoding


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter. Pure arithmetic: no I/O, no clock, no hidden randomness.

    The base delay before retry ``n`` (0 for the first retry after a disconnect or after the
    first failed attempt) is ``min(max_delay, initial_delay * multiplier**n)``. Jitter scales it
    by a random factor in ``(1 - jitter, 1]``: with ``jitter=0.5`` a delay lies in
    ``(base/2, base]``; ``jitter=0`` makes the schedule deterministic; ``jitter=1`` is "full
    jitter". So ``max_delay`` is a true upper bound. The random numbers come from the
    ``random.Random`` passed in, so a seeded generator gives a reproducible schedule.
    """

    initial_delay: float = 0.5
    max_delay: float = 20.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.initial_delay) and self.initial_delay >= 0):
            raise ValueError("initial_delay must be a finite number >= 0")
        if not (math.isfinite(self.max_delay) and self.max_delay >= self.initial_delay):
            raise ValueError("max_delay must be a finite number >= initial_delay")
        if not (math.isfinite(self.multiplier) and self.multiplier >= 1):
            raise ValueError("multiplier must be a finite number >= 1")
        if not (0 <= self.jitter <= 1):
            raise ValueError("jitter must be between 0 and 1")

    def base_delay(self, retry: int) -> float:
        """The delay before retry number ``retry`` (0-based), before jitter."""
        if retry < 0:
            raise ValueError("retry must be >= 0")
        if self.initial_delay == 0:
            return 0.0
        try:
            delay = self.initial_delay * self.multiplier**retry
        except OverflowError:  # forever-reconnecting clients reach huge retry numbers
            return self.max_delay
        return min(self.max_delay, delay)

    def delay(self, retry: int, rng: random.Random) -> float:
        """The jittered delay before retry number ``retry`` (0-based)."""
        base = self.base_delay(retry)
        if self.jitter == 0:
            return base
        return base * (1.0 - self.jitter * rng.random())

    def delays(self, rng: random.Random) -> Iterator[float]:
        """The infinite schedule: ``delay(0, rng), delay(1, rng), ...``."""
        retry = 0
        while True:
            yield self.delay(retry, rng)
            retry += 1


def default_is_fatal(error: BaseException) -> bool:
    """Decide whether ``error``, which ended a connection or an attempt, stops the client.

    Fatal: a close code in :data:`DEFAULT_FATAL_CLOSE_CODES` (4003, 1008...); an HTTP status
    not in :data:`DEFAULT_RETRYABLE_HTTP_STATUSES` (401, 403, 404...); a
    :class:`ProtocolViolation`; an invalid HTTP response; any exception the client does not know
    (e.g. raised by a ``headers`` provider or an ``on_connect`` hook: retrying a bug helps no one).

    Transient: network errors (``OSError``, including connection refused and timeouts), a
    connection closed with any other code or without a close frame, a handshake cut short by
    the server (e.g. while it restarts), HTTP 408/429/500/502/503/504, and the connections the
    client drops itself (:class:`HeartbeatTimeout`, :class:`ReceiveOverflow`).
    """
    if isinstance(error, HeartbeatTimeout | ReceiveOverflow):
        return False  # the client's own decision to drop a connection
    if isinstance(error, ConnectionClosed):
        return error.rcvd is not None and error.rcvd.code in DEFAULT_FATAL_CLOSE_CODES
    if isinstance(error, InvalidStatus):
        return error.response.status_code not in DEFAULT_RETRYABLE_HTTP_STATUSES
    if isinstance(error, OSError | trio.BrokenResourceError):  # TimeoutError is an OSError
        return False
    if isinstance(error, InvalidMessage):
        # The server closed the TCP connection during the handshake: typical of a restart.
        return not isinstance(error.__cause__, EOFError)
    return True


def _retry_after(error: BaseException | None) -> float | None:
    """The ``Retry-After`` seconds of a refused handshake, if the server sent a usable one."""
    if not isinstance(error, InvalidStatus):
        return None
    value = error.response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: not worth parsing for a reconnect delay
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _encode(message: Mapping[str, Any]) -> str:
    if not isinstance(message, Mapping):
        raise TypeError(f"a message must be a mapping (a dict), not {type(message).__name__}")
    if not isinstance(message.get("type"), str):
        raise ValueError("a message needs a string 'type'")
    return json.dumps(dict(message), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _token_exp(token: str | None) -> float | None:
    """The `exp` claim of a JWT, read without verifying anything (the server verifies); None
    when the token is not a JWT or has no numeric `exp`."""
    if token is None:
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        return None
    return float(exp)


def _decode(raw: str | bytes) -> Message | None:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        return None
    return value


RECENT_OFFSETS = 1024  # offsets remembered per stream and epoch (see _SeenOffsets)

# The types of the server's replies to this client's subscribe / unsubscribe requests.
_SUBSCRIBE_REPLIES = frozenset({"subscribed", "error"})
_UNSUBSCRIBE_REPLIES = frozenset({"unsubscribed", "error"})


class _SeenOffsets:
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


def _is_position(value: object) -> TypeGuard[dict[str, Any]]:
    return (
        isinstance(value, dict)
        and isinstance(value.get("offset"), int)
        and isinstance(value.get("epoch"), str)
    )


def _later(known: dict[str, Any] | None, position: dict[str, Any]) -> dict[str, Any]:
    """The position to keep: `position`, unless `known` is greater in the same epoch (a late
    message does not move a stream's position back)."""
    if known is not None and known.get("epoch") == position["epoch"]:
        offset = known.get("offset")
        if isinstance(offset, int) and offset >= position["offset"]:
            return known
    return position


def _raise_single(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Re-raise the one real exception of a nursery's group (the client hides its nursery)."""
    real = [e for e in group.exceptions if not isinstance(e, trio.Cancelled)]
    if len(real) > 1:
        raise group
    chosen = real[0] if real else group.exceptions[0]
    context = chosen.__context__
    try:
        raise chosen
    finally:
        chosen.__context__ = context
        del chosen, context


# ---------------------------------------------------------------------------------------------
# Public data types


class ClientState(enum.Enum):
    """Where the client is in its life. Transitions::

    CONNECTING -> CONNECTED -> RECONNECTING -> CONNECTED -> ... -> CLOSED
    (any state) -> CLOSED
    """

    CONNECTING = "connecting"  # never connected yet (first attempt, or retrying it)
    CONNECTED = "connected"  # welcome received, rooms rejoined: the outbox is being written
    RECONNECTING = "reconnecting"  # was connected, lost the connection, waiting or retrying
    CLOSED = "closed"  # final


@dataclass(frozen=True, slots=True)
class ClientEvent:
    """What listeners registered with :meth:`WebSocketClient.on` receive.

    ``type`` says which fields are meaningful:

    * ``connected``: ``welcome`` (the server's welcome message), ``attempt`` (the number of the
      connection, 1 for the first).
    * ``disconnected``: ``close_code`` / ``close_reason`` (1006 and "" when the connection dropped
      without a close frame), ``error`` (the ``ConnectionClosed``; ``None`` for ``aclose()``).
    * ``reconnecting``: ``attempt`` (1-based number of the attempt about to be made, counted
      since the last successful connection), ``delay`` (seconds waited before it), ``error``
      (why the previous connection or attempt ended).
    * ``rejoin_failed``: ``room``, ``error`` (a :class:`ServerError`): a room could not be joined
      again after a reconnect; the client forgot it.
    * ``recovery_failed``: ``room`` (a room, or ``subscription:<key>``), ``reason``
      (``epoch_changed``, ``retention``, ``too_many``, ``unavailable``): what was missed while
      disconnected cannot be replayed. For a room the client has already asked for the latest
      ``refetch_limit`` messages (a ``history`` message follows); for a subscription, refetch
      the table's current state yourself.
    * ``closed``: ``error`` (``None`` after a normal close).
    """

    type: EventType
    attempt: int = 0
    delay: float = 0.0
    close_code: int | None = None
    close_reason: str = ""
    error: BaseException | None = None
    welcome: Message | None = None
    room: str | None = None
    reason: str = ""


Listener: TypeAlias = Callable[[ClientEvent], Awaitable[None] | None]
L = TypeVar("L", bound=Listener)


@dataclass(frozen=True, slots=True)
class ConnectInfo:
    """What the ``on_connect`` hook receives on every successful (re)connect."""

    welcome: Message
    connection_number: int  # 1 for the first connection, 2 after the first reconnect...
    rooms: tuple[str, ...]  # rooms being rejoined, in join order (join requests already sent)


ConnectHook: TypeAlias = Callable[
    [ConnectInfo], Awaitable[Iterable[Mapping[str, Any]]] | Iterable[Mapping[str, Any]]
]


@dataclass(slots=True)
class ClientStats:
    """Counters since the client started."""

    connections: int = 0  # successful connections (welcome received, rooms restored)
    failed_attempts: int = 0
    sent: int = 0  # messages written to the socket (application messages only)
    received: int = 0  # valid messages read from the socket (including replies and welcomes)
    invalid: int = 0  # incoming frames that were not JSON objects with a string type (dropped)
    dropped: int = 0  # queued messages discarded by the "drop_oldest" overflow policy
    lost: int = 0  # messages whose write failed because the connection broke (not resent)
    discarded: int = 0  # messages still queued when the client closed
    refreshes: int = 0  # fresh tokens sent in-band (`refresh`)
    duplicates: int = 0  # room messages and changes dropped: this client already received them
    receive_dropped: int = 0  # unread messages discarded by receive_overflow="drop_oldest"
    overflows: int = 0  # connections dropped because the app fell receive_buffer behind
    heartbeat_timeouts: int = 0  # connections dropped because no pong came within ping_timeout


# ---------------------------------------------------------------------------------------------
# Internals


class _Signal:
    """Wake every task waiting for "something changed"; waiters re-check their condition."""

    __slots__ = ("_lot",)

    def __init__(self) -> None:
        self._lot = trio.lowlevel.ParkingLot()

    def fire(self) -> None:
        self._lot.unpark_all()

    async def wait(self) -> None:
        await self._lot.park()


class _Waiter:
    """A one-shot outcome: success, or a failure raised (freshly built) in every waiter."""

    __slots__ = ("_error", "_event")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._error: Callable[[], BaseException] | None = None

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def succeed(self) -> None:
        self._event.set()

    def fail(self, make_error: Callable[[], BaseException]) -> None:
        if not self._event.is_set():
            self._error = make_error
            self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        if self._error is not None:
            raise self._error()


_DATA: Final = "data"
_JOIN: Final = "join"
_LEAVE: Final = "leave"
_SUBSCRIBE: Final = "subscribe"  # `room` holds the subscription's client-side key
_UNSUBSCRIBE: Final = "unsubscribe"  # `room` holds the server's subscription id


@dataclass(eq=False)
class _Subscription:
    """A table subscription the client keeps across reconnects."""

    table: str
    filters: dict[str, Any]
    position: dict[str, Any] | None = None  # of the last change received
    server_id: str | None = None  # the server's subscription id on the current connection
    live: _Waiter = field(default_factory=_Waiter)  # its first `subscribed` (or refusal)
    awaited: bool = False  # made by `await subscribe()`: a refusal is raised, not delivered


@dataclass(eq=False, slots=True)
class _Item:
    """An outbox entry: an application message, or a room operation resolved when written."""

    kind: str
    text: str = ""
    room: str = ""
    waiter: _Waiter | None = None
    seq: int = 0


@dataclass(eq=False, slots=True)
class _Request:
    kind: str  # _JOIN or _LEAVE
    room: str
    waiter: _Waiter | None


@dataclass(eq=False)
class _Session:
    """One WebSocket connection, from the handshake to its end."""

    ws: ClientConnection
    # The scope of everything tied to this connection: the session's tasks and websockets'
    # own (frame reader). Cancelling it drops the connection whatever state websockets is in.
    scope: trio.CancelScope
    join_sent: set[str] = field(default_factory=set)  # join requested on this connection
    confirmed: set[str] = field(default_factory=set)  # room_joined received on this connection
    pending: dict[str, _Request] = field(default_factory=dict)  # request id -> request
    restore_ids: set[str] = field(default_factory=set)
    # Subscribe requests in flight: request id -> (key, table).
    subscribe_ids: dict[str, tuple[str, str]] = field(default_factory=dict)
    # data_updates of subscription ids not known yet, held while a subscribe for their table
    # is in flight (the server replays before `subscribed` names the id): id -> messages.
    held: dict[str, list[Message]] = field(default_factory=dict)
    server_ids: set[str] = field(default_factory=set)  # subscriptions held by this connection
    abandoned: set[str] = field(default_factory=set)  # ids unsubscribed: their updates dropped
    unsubscribe_ids: set[str] = field(default_factory=set)  # unsubscribe requests in flight
    failed_rooms: list[tuple[str, ServerError]] = field(default_factory=list)
    ended: bool = False  # the reader saw the end of the connection, or the client dropped it
    close_exc: ConnectionClosed | None = None
    drop_error: ClientError | None = None  # why the client dropped it (heartbeat, overflow)
    close_requested: bool = False
    writing: bool = False
    token_expires_at: float | None = None  # `exp` of the token this connection runs on
    refresh_ids: set[str] = field(default_factory=set)  # in-band refreshes awaiting a reply


@dataclass(slots=True)
class _Outcome:
    live: bool = False  # reached CONNECTED
    closed_by_user: bool = False
    error: BaseException | None = None
    close_code: int = int(CloseCode.ABNORMAL_CLOSURE)
    close_reason: str = ""


# ---------------------------------------------------------------------------------------------
# The client


class WebSocketClient:
    """A trio_rt client that stays connected: it reconnects, re-joins rooms and queues messages.

    Use it as an async context manager; the connection is made in the background::

        async with WebSocketClient("ws://127.0.0.1:3001/") as client:
            await client.wait_connected()        # optional
            await client.join_room("chat:general")
            await client.send({"type": "chat_message", "payload": {...}})
            async for message in client:
                ...

    Lifetime: ``async with`` opens a nursery that runs the connection supervisor (and, while
    connected, a reader and a writer task). Leaving the block normally calls :meth:`aclose`
    (flush, then close handshake with code 1000). Leaving it with an exception, or being
    cancelled, cancels the background tasks at once and drops the TCP connection. Either way no
    task started by the client outlives the block. An exception raised by an event listener
    stops the client and propagates out of the block.

    Reconnection: after a lost connection (and after a failed first attempt) the client waits
    ``Backoff(initial_delay, max_delay, multiplier, jitter).delay(n)`` with ``n`` = 0, 1, 2...
    between attempts; ``n`` and the attempt counter reset after every successful connection.
    After ``max_attempts`` consecutive failed attempts (``None``: never) or a fatal error (see
    ``is_fatal``, default :func:`default_is_fatal`), the client closes: iteration and
    :meth:`receive` raise :class:`ClientClosed` whose ``error`` is the last error. A ``503``
    or ``429`` with a ``Retry-After`` header lengthens the next delay up to ``max_delay``.

    A connection counts as successful once the server's ``welcome`` arrived and every remembered
    room was joined again (or refused: ``rejoin_failed`` event), all within ``open_timeout``.

    Parameters:
        url: ``ws://`` or ``wss://`` URL of the trio_rt server, or a non-empty sequence of URLs
            (servers of one deployment): each attempt after a failed attempt or a lost
            connection goes to the next URL, round-robin.
        url_index: with several URLs, the index of the first one to try; ``None`` (default)
            picks one at random (with ``rng``), which spreads clients over the servers.
        initial_delay, max_delay, multiplier, jitter: the :class:`Backoff` schedule.
        max_attempts: consecutive failed attempts before giving up; ``None`` retries forever.
        rng: the random generator of the jitter (seed it for reproducible delays).
        queue_size: capacity of the outbox, in application messages (room operations don't
            count).
        overflow: what :meth:`send` does when the outbox is full and the client is not
            connected: ``"raise"`` :class:`QueueFull` (default), ``"drop_oldest"`` queued message,
            or ``"wait"`` for room. While connected, :meth:`send` always waits (backpressure).
        receive_buffer: capacity of the receive buffer, in messages (>= 1). The reader reads
            the socket all the time; when the app falls this many messages behind, the
            ``receive_overflow`` policy applies.
        receive_overflow: ``"reconnect"`` (default): keep every message received, drop the
            connection (:class:`ReceiveOverflow`, ``stats.overflows``) and reconnect once the
            app has read the buffer down to half; rooms with history and table subscriptions
            then recover what was missed (other messages sent meanwhile are lost, as when the
            server drops a slow consumer). ``"drop_oldest"``: stay connected and discard the
            oldest unread message (``stats.receive_dropped``). ``"wait"``: stop reading until
            the app makes room (backpressure up to the server, nothing dropped); the
            heartbeat then drops a connection left unread for longer than ``ping_timeout``,
            so it needs ``ping_interval`` and ``ping_timeout``.
        headers: extra HTTP headers for the handshake: a mapping, or a callable (sync or async)
            returning one, called before every connection attempt.
        token: a bearer token (JWT) for the handshake: a string, or a callable (sync or async)
            returning one, called before every connection attempt and sent as
            ``Authorization: Bearer <token>`` (do not also set that header in ``headers``).
        refresh_margin: with a callable ``token``, seconds before the current token's ``exp``
            (read from the token, unverified) at which the client calls the provider again and
            sends the fresh token in-band (``refresh``), so the server does not close the
            connection with 4004. ``None`` disables in-band refresh (a 4004 close still
            reconnects with a fresh token).
        on_connect: hook called (sync or async) with a :class:`ConnectInfo` after every welcome,
            once the rooms' join requests are sent; the messages it returns are sent right
            away, before the outbox (e.g. a request to replay missed messages).
        is_fatal: decides which errors stop the client instead of reconnecting.
        compression: negotiate permessage-deflate.
        open_timeout: seconds allowed for one attempt: ``headers`` provider, TCP/TLS and
            WebSocket handshakes, welcome, room rejoins and ``on_connect``; ``None``: no limit.
        close_timeout: seconds allowed for flushing the outbox on close, and for the closing
            handshake; then the TCP connection is closed whatever its state, so
            :meth:`aclose` returns within ``2 * close_timeout`` seconds.
        ping_interval, ping_timeout: the client's liveness check: a WebSocket ping every
            ``ping_interval`` seconds; when its pong has not arrived ``ping_timeout`` seconds
            later (``None``: no limit) the client drops the TCP connection
            (:class:`HeartbeatTimeout`) and reconnects. ``ping_interval=None`` disables it.
        max_size: largest incoming message, in bytes (``None``: no limit).
        ssl: TLS context for ``wss://``.
        proxy: as websockets: ``True`` uses the system's proxy settings, ``None`` none, or a URL.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        url_index: int | None = None,
        initial_delay: float = 0.5,
        max_delay: float = 20.0,
        multiplier: float = 2.0,
        jitter: float = 0.5,
        max_attempts: int | None = None,
        rng: random.Random | None = None,
        queue_size: int = 1000,
        overflow: OverflowPolicy = "raise",
        receive_buffer: int = 1000,
        receive_overflow: ReceiveOverflowPolicy = "reconnect",
        headers: HeadersLike | HeadersProvider | None = None,
        token: str | TokenProvider | None = None,
        refresh_margin: float | None = 30.0,
        on_connect: ConnectHook | None = None,
        is_fatal: Callable[[BaseException], bool] = default_is_fatal,
        compression: bool = True,
        open_timeout: float | None = 10.0,
        close_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        max_size: int | None = 2**20,
        ssl: ssl_module.SSLContext | None = None,
        proxy: str | Literal[True] | None = True,
    ) -> None:
        urls = (url,) if isinstance(url, str) else tuple(url)
        if not urls:
            raise ValueError("url must be a URL or a non-empty sequence of URLs")
        for one in urls:
            if not isinstance(one, str):
                raise TypeError(f"a URL must be a str, not {type(one).__name__}")
            uri = parse_uri(one)  # raises InvalidURI now rather than at the first attempt
            if ssl is not None and not uri.secure:
                raise ValueError("ssl is only for wss:// URLs")
        if url_index is not None and (
            isinstance(url_index, bool) or not 0 <= url_index < len(urls)
        ):
            raise ValueError(f"url_index must be None or an integer in [0, {len(urls)})")
        if max_attempts is not None and (isinstance(max_attempts, bool) or max_attempts < 1):
            raise ValueError("max_attempts must be None or an integer >= 1")
        if isinstance(queue_size, bool) or queue_size < 1:
            raise ValueError("queue_size must be an integer >= 1")
        if overflow not in ("raise", "drop_oldest", "wait"):
            raise ValueError("overflow must be 'raise', 'drop_oldest' or 'wait'")
        if isinstance(receive_buffer, bool) or receive_buffer < 1:
            raise ValueError("receive_buffer must be an integer >= 1")
        if receive_overflow not in ("reconnect", "drop_oldest", "wait"):
            raise ValueError("receive_overflow must be 'reconnect', 'drop_oldest' or 'wait'")
        if receive_overflow == "wait" and (ping_interval is None or ping_timeout is None):
            # While waiting, the client does not read: only the heartbeat can tell it that
            # the server died meanwhile.
            raise ValueError("receive_overflow='wait' needs ping_interval and ping_timeout")
        if ping_interval is not None and not ping_interval > 0:
            raise ValueError("ping_interval must be None or > 0")
        if ping_timeout is not None and not ping_timeout > 0:
            raise ValueError("ping_timeout must be None or > 0")
        if open_timeout is not None and not open_timeout > 0:
            raise ValueError("open_timeout must be None or > 0")
        if not close_timeout > 0:
            raise ValueError("close_timeout must be > 0")
        if token is not None and not callable(token) and (not isinstance(token, str) or not token):
            raise ValueError("token must be a non-empty string or a callable returning one")
        if refresh_margin is not None and not (
            isinstance(refresh_margin, int | float) and refresh_margin >= 0
        ):
            raise ValueError("refresh_margin must be None or a number of seconds >= 0")

        self._rng = rng if rng is not None else random.Random()
        self.urls: tuple[str, ...] = urls
        """Every URL the client may connect to, in round-robin order."""
        if url_index is None:
            url_index = self._rng.randrange(len(urls)) if len(urls) > 1 else 0
        self._url_index = url_index
        self.url: str = urls[url_index]
        """The URL of the current (or next) connection attempt."""
        self.backoff = Backoff(initial_delay, max_delay, multiplier, jitter)
        self.max_attempts = max_attempts
        self.stats = ClientStats()
        self.welcome: Message | None = None
        """The latest ``welcome`` message (``None`` before the first connection). Welcomes are
        not delivered to the iterator."""

        self._queue_size = queue_size
        self._overflow = overflow
        self._headers = headers
        self._token = token
        self._refresh_margin = refresh_margin
        self._on_connect = on_connect
        self._is_fatal = is_fatal
        self._compression = compression
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._max_size = max_size
        self._ssl = ssl
        self._proxy = proxy

        self._state = ClientState.CONNECTING
        self._changed = _Signal()  # any state, outbox or session change
        self._listeners: dict[str, list[Listener]] = {name: [] for name in EVENT_TYPES}
        self._listener_error: Exception | None = None

        self._outbox: deque[_Item] = deque()
        self._queued = 0  # application messages in the outbox
        self._enqueued_seq = 0  # seq of the last application message queued
        self._settled_seq = 0  # every message up to this seq was written, lost or dropped
        self._rooms: dict[str, _Waiter] = {}  # rooms to be in -> completion of their first join
        # Stream positions: the last seen per room with history, to recover after a reconnect,
        # and the offsets seen lately, to drop duplicates.
        self._positions: dict[str, dict[str, Any]] = {}
        self._seen: dict[str, _SeenOffsets] = {}
        self._sub_seen: dict[str, _SeenOffsets] = {}  # the same per subscription key
        self._subscriptions: dict[str, _Subscription] = {}
        self._by_server_id: dict[str, str] = {}  # the server's subscription id -> key
        self._subscription_keys = 0
        self._recovery_failed: list[tuple[str, str]] = []  # events to emit from the reader
        self.refetch_limit = 50
        """How many messages to ask for when a room's recovery is not possible."""
        self._request_ids = 0

        # The receive buffer: filled by the reader, never waiting for the app (the policy
        # decides when it is full); read by receive() and the iterator.
        self._inbox: deque[Message] = deque()
        self._inbox_size = receive_buffer
        self._inbox_policy = receive_overflow
        self._inbox_closed = False
        self._inbox_lot = trio.lowlevel.ParkingLot()  # receivers waiting for a message
        self._waiting_for_room = False  # the supervisor or the reader waits for the app

        self._nursery_cm: contextlib.AbstractAsyncContextManager[trio.Nursery] | None = None
        self._run_scope = trio.CancelScope()
        self._attempt_scope: trio.CancelScope | None = None
        self._session: _Session | None = None  # the current connection, live or not yet
        self._live: _Session | None = None  # the current connection once CONNECTED
        self._closing = False
        self._close_error: BaseException | None = None
        self._close_message = "the client is closed"
        self._done = trio.Event()
        self._supervisor_task: trio.lowlevel.Task | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        """Start the background supervisor; returns at once (the client is CONNECTING)."""
        if self._nursery_cm is not None:
            raise RuntimeError("a WebSocketClient can be entered only once")
        cm = trio.open_nursery()
        nursery = await cm.__aenter__()
        self._nursery_cm = cm
        nursery.start_soon(self._supervise)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Normal exit: :meth:`aclose` (graceful). Exit with an exception or cancellation: cancel
        the background tasks at once. Waits for every background task to end. Re-raises the
        block's exception unchanged (not wrapped in an ExceptionGroup), or the exception of an
        event listener that stopped the client."""
        cm = self._nursery_cm
        assert cm is not None, "__aexit__ without __aenter__"
        if exc is None:
            try:
                await self.aclose()
            except BaseException as close_error:  # cancelled while closing gracefully
                self._abort()
                exc_type, exc, tb = type(close_error), close_error, close_error.__traceback__
        else:
            self._abort()
        try:
            return await cm.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            _raise_single(group)

    async def aclose(self) -> None:
        """Close gracefully and wait until the client is CLOSED. Idempotent.

        From now on :meth:`send`, :meth:`join_room` and :meth:`leave_room` raise
        :class:`ClientClosed`. If connected: the outbox is flushed (at most ``close_timeout``
        seconds; incoming messages are still buffered meanwhile), then the WebSocket is closed
        with code 1000 (closing handshake bounded by ``close_timeout``; what arrives during it is
        read and dropped, so unread messages cannot stall it); then the TCP connection and
        websockets' tasks are closed whatever state they are in, so this returns within
        ``2 * close_timeout`` seconds even when the server is dead. If connecting or waiting
        to reconnect: that is cancelled. Messages still queued are discarded
        (``stats.discarded``); pending ``join_room()`` and ``subscribe()`` calls raise
        :class:`ClientClosed`. The iterator yields what is already buffered, then stops.

        Called from an event listener, it requests the close and returns without waiting (the
        listener runs in the task that does the closing).
        """
        if self._nursery_cm is None:
            raise RuntimeError("the client is not running: use 'async with WebSocketClient(...)'")
        if not self._closing:
            self._closing = True
            session = self._live
            if session is not None:
                session.close_requested = True
            elif self._attempt_scope is not None:
                self._attempt_scope.cancel()
            self._changed.fire()
        if trio.lowlevel.current_task() is self._supervisor_task:
            await trio.lowlevel.checkpoint()
            return
        await self._done.wait()

    def _abort(self) -> None:
        self._closing = True
        self._run_scope.cancel()

    # -- public properties --------------------------------------------------------------------
    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def connection_id(self) -> str | None:
        """``connection_id`` of the latest welcome (a new one after every reconnect)."""
        if self.welcome is None:
            return None
        value = self.welcome.get("connection_id")
        return value if isinstance(value, str) else None

    @property
    def rooms(self) -> frozenset[str]:
        """Rooms the client is in or joining; they are joined again after every reconnect."""
        return frozenset(self._rooms)

    @property
    def pending(self) -> int:
        """Application messages queued and not written yet."""
        return self._queued

    # -- events -------------------------------------------------------------------------------
    def on(self, event: EventType) -> Callable[[L], L]:
        """Decorator registering a listener: ``@client.on("connected")``.

        Listeners (``def`` or ``async def``, taking a :class:`ClientEvent`) are called by the
        supervisor task, in registration order, and awaited before the client goes on: events
        arrive in order (``connected``, ``disconnected``, ``reconnecting``..., ``connected``...).
        Keep them short. An exception raised by a listener stops the client and propagates out
        of ``async with``.
        """

        def register(fn: L) -> L:
            self.add_listener(event, fn)
            return fn

        return register

    def add_listener(self, event: EventType, fn: Listener) -> None:
        if event not in EVENT_TYPES:
            raise ValueError(f"unknown event {event!r}; expected one of {sorted(EVENT_TYPES)}")
        self._listeners[event].append(fn)

    def remove_listener(self, event: EventType, fn: Listener) -> None:
        self._listeners[event].remove(fn)

    async def _emit(self, event: ClientEvent) -> None:
        for fn in list(self._listeners[event.type]):
            try:
                result = fn(event)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                # Stop the client; _supervise re-raises this out of the nursery.
                if self._listener_error is None:
                    self._listener_error = exc
                self._abort()
                await trio.lowlevel.checkpoint()  # raises Cancelled: unwinds the supervisor
                raise AssertionError("unreachable: the run scope is cancelled") from exc

    # -- sending ------------------------------------------------------------------------------
    async def send(self, message: Mapping[str, Any]) -> None:
        """Queue ``message`` (a JSON-serializable mapping with a string ``type``) for the server.

        Returns once queued, not once written (see :meth:`flush`). Messages are written in the
        order ``send()`` was called, after the rooms are rejoined on a new connection.
        Serialization happens here: ``TypeError`` / ``ValueError`` for a bad message.

        When the outbox is full: while CONNECTED, wait for room (backpressure); otherwise apply
        the ``overflow`` policy: ``"raise"`` :class:`QueueFull`, ``"drop_oldest"`` (the oldest
        queued message is discarded, counted in ``stats.dropped``), ``"wait"``.

        Raises :class:`ClientClosed` once the client is closing or closed. Cancelling a
        ``send()`` that waits for room leaves nothing queued.
        """
        text = _encode(message)
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            self._raise_if_closing()
            if self._queued < self._queue_size:
                break
            if self._state is ClientState.CONNECTED or self._overflow == "wait":
                await self._changed.wait()
            elif self._overflow == "raise":
                raise QueueFull(
                    f"{self._queued} messages are waiting for the connection (queue_size)"
                )
            else:
                self._drop_oldest()
        self._enqueued_seq += 1
        self._outbox.append(_Item(_DATA, text=text, seq=self._enqueued_seq))
        self._queued += 1
        self._changed.fire()
        await trio.lowlevel.cancel_shielded_checkpoint()  # queued: do not report a cancellation

    def _drop_oldest(self) -> None:
        for index, item in enumerate(self._outbox):
            if item.kind == _DATA:
                del self._outbox[index]
                self._queued -= 1
                self.stats.dropped += 1
                self._settled_seq = max(self._settled_seq, item.seq)
                return

    async def flush(self) -> None:
        """Wait until every message queued by :meth:`send` before this call has left the
        outbox: written to the socket, or dropped / lost per the delivery policy. While
        disconnected this waits for the reconnection. Raises :class:`ClientClosed` if the client
        closes first."""
        target = self._enqueued_seq
        while self._settled_seq < target:
            if self._state is ClientState.CLOSED:
                raise self._closed_exception()
            await self._changed.wait()
        await trio.lowlevel.checkpoint()

    # -- rooms --------------------------------------------------------------------------------
    async def join_room(self, room: str) -> None:
        """Join ``room`` and remember it: it is joined again after every reconnect.

        Returns when the server confirmed (``room_joined``); if the client is disconnected that
        is after the next successful connection. Raises :class:`ServerError` when the server
        refuses (``room_full``, ``not_permitted``, ``invalid_field``...): the room is then
        forgotten. Raises :class:`ClientClosed` if the client closes first. Idempotent: joining
        a room already joined returns at once. Cancelling the call does not cancel the join.
        The confirmation is consumed: it is not delivered to the iterator.
        """
        if not isinstance(room, str) or not room:
            raise ValueError("room must be a non-empty string")
        self._raise_if_closing()
        waiter = self._rooms.get(room)
        if waiter is None:
            waiter = self._rooms[room] = _Waiter()
            self._outbox.append(_Item(_JOIN, room=room, waiter=waiter))
            self._changed.fire()
        await waiter.wait()

    async def leave_room(self, room: str) -> None:
        """Leave ``room`` and forget it (it will not be rejoined).

        If the current connection joined it, sends ``leave_room`` (after the messages already
        queued) and returns when the server confirmed with ``room_left`` or the connection
        ended; otherwise returns at once. A pending :meth:`join_room` for the room raises
        :class:`ClientError`. Raises :class:`ServerError` if the server refuses, and
        :class:`ClientClosed` if the client is closing or closed.
        """
        self._raise_if_closing()
        waiter = self._rooms.pop(room, None)
        self._forget_position(room)
        if waiter is not None:
            waiter.fail(lambda: ClientError(f"left room {room!r} before the join completed"))
        session = self._session
        if session is None or room not in session.join_sent:
            # No connection holds the room... unless a join is still queued for this one:
            # then the queued join is skipped because the room is no longer wanted.
            await trio.lowlevel.checkpoint()
            return
        done = _Waiter()
        self._outbox.append(_Item(_LEAVE, room=room, waiter=done))
        self._changed.fire()
        await done.wait()

    # -- positions and subscriptions ------------------------------------------------------------
    def position(self, room: str) -> dict[str, Any] | None:
        """The last stream position seen in `room` (rooms with history), sent as ``since``
        when the room is joined again after a reconnect."""
        return self._positions.get(room)

    def _forget_position(self, room: str) -> None:
        # A room left (or removed by the server) is joined afresh later, without `since`: the
        # client does not ask for what was said while it was not a member (as the browser's).
        self._positions.pop(room, None)
        self._seen.pop(room, None)

    async def subscribe(self, table: str, filters: Mapping[str, Any] | None = None) -> str:
        """Subscribe to the changes of `table` matching `filters`; returns the subscription's
        key once it is live on the server.

        Returns when the server's ``subscribed`` reply arrived: the subscription is registered
        and, for a renewal, its replay is done. While the client is disconnected that is after
        the next successful connection. Raises :class:`ServerError` when the server refuses
        (``not_permitted``, ``invalid_field``, ``limit_exceeded``...): the subscription is then
        forgotten and the refusal is not delivered as a message. Raises :class:`ClientClosed`
        if the client closes first, :class:`ClientError` if :meth:`unsubscribe` is called
        first. Cancelling the call does not cancel the subscription (the key is lost to the
        caller then: :attr:`subscriptions` lists it).

        The subscription is renewed after every reconnect, from the position of the last change
        received (changes missed meanwhile are replayed, or a ``recovery_failed`` event says
        they cannot be). ``data_update`` messages are delivered with an added ``key``, replayed
        ones included.
        """
        key = self.subscribe_nowait(table, filters)
        sub = self._subscriptions[key]
        sub.awaited = True
        await sub.live.wait()
        return key

    def subscribe_nowait(self, table: str, filters: Mapping[str, Any] | None = None) -> str:
        """Like :meth:`subscribe`, but returns the key at once, without waiting for the server
        (what ``subscribe()`` did before it became a coroutine).

        A refusal arrives as an ``error`` message with the same ``key`` (the subscription is
        then forgotten), as does the refusal of a renewal after a reconnect.
        """
        if not isinstance(table, str) or not table:
            raise ValueError("table must be a non-empty string")
        self._raise_if_closing()
        self._subscription_keys += 1
        key = f"sub{self._subscription_keys}"
        self._subscriptions[key] = _Subscription(table, dict(filters or {}))
        self._outbox.append(_Item(_SUBSCRIBE, room=key))
        self._changed.fire()
        return key

    def unsubscribe(self, key: str) -> None:
        """Forget a subscription; the server is told if the current connection holds it (or
        as soon as its pending ``subscribed`` reply arrives). Changes of it still in flight
        are dropped. A pending :meth:`subscribe` for it raises :class:`ClientError`. Unknown
        keys are ignored."""
        sub = self._subscriptions.pop(key, None)
        if sub is None:
            return
        self._sub_seen.pop(key, None)
        sub.live.fail(lambda: ClientError(f"unsubscribed {key!r} before it was live"))
        sid = sub.server_id
        if sid is None:
            return  # not live on this connection; a `subscribed` still in flight is handled
        self._by_server_id.pop(sid, None)
        session = self._session
        if session is not None and sid in session.server_ids:
            session.abandoned.add(sid)
            self._outbox.append(_Item(_UNSUBSCRIBE, room=sid))
            self._changed.fire()

    @property
    def subscriptions(self) -> Mapping[str, tuple[str, dict[str, Any]]]:
        """key -> (table, filters) of the subscriptions kept across reconnects."""
        return {key: (sub.table, sub.filters) for key, sub in self._subscriptions.items()}

    # -- receiving ----------------------------------------------------------------------------
    async def receive(self) -> Message:
        """The next server message, in arrival order (the ``welcome`` and the replies consumed
        by :meth:`join_room` / :meth:`leave_room` excepted).

        Waits while none is buffered, across reconnections. Once the client is closed and the
        buffer is empty, raises :class:`ClientClosed` (its ``error`` says why; ``None`` after a
        normal close)."""
        message = await self._take()
        if message is None:
            raise self._closed_exception() from self._close_error
        return message

    async def _take(self) -> Message | None:
        """The next buffered message, waiting for one; None once closed and drained. A
        cancelled call takes nothing."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._inbox:
            if self._inbox_closed:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return None
            await self._inbox_lot.park()
        message = self._inbox.popleft()
        if self._waiting_for_room and len(self._inbox) <= self._room_mark():
            self._changed.fire()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return message

    def _room_mark(self) -> int:
        """How few unread messages let a waiting reader ("wait": one slot) or reconnect
        ("reconnect": half the buffer) go on."""
        return self._inbox_size - 1 if self._inbox_policy == "wait" else self._inbox_size // 2

    def _deliver(self, message: Message) -> bool:
        """Buffer `message` for the app; never waits. True when the buffer is now full under
        the "reconnect" or "wait" policy (the caller drops the connection, or waits for
        room); "drop_oldest" discards the oldest unread message instead."""
        if self._inbox_closed:
            return False
        inbox = self._inbox
        if self._inbox_policy == "drop_oldest" and len(inbox) >= self._inbox_size:
            inbox.popleft()
            self.stats.receive_dropped += 1
        inbox.append(message)
        self._inbox_lot.unpark_all()
        return self._inbox_policy != "drop_oldest" and len(inbox) >= self._inbox_size

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        """Like :meth:`receive`, but the iteration simply ends after a normal close; it raises
        :class:`ClientClosed` when a fatal error or exhausted reconnection closed the client."""
        message = await self._take()
        if message is None:
            if self._close_error is None:
                raise StopAsyncIteration
            raise self._closed_exception() from self._close_error
        return message

    async def wait_connected(self) -> None:
        """Wait until the client is CONNECTED (returns at once if it is).

        Raises :class:`ClientClosed` if the client closes first (e.g. fatal error, or
        ``max_attempts`` failed attempts)."""
        while self._state is not ClientState.CONNECTED:
            if self._state is ClientState.CLOSED:
                raise self._closed_exception()
            await self._changed.wait()
        await trio.lowlevel.checkpoint()

    # -- helpers ------------------------------------------------------------------------------
    def _raise_if_closing(self) -> None:
        if self._nursery_cm is None:
            raise RuntimeError("the client is not running: use 'async with WebSocketClient(...)'")
        if self._closing:
            raise self._closed_exception()

    def _closed_exception(self) -> ClientClosed:
        return ClientClosed(self._close_message, error=self._close_error)

    def _set_state(self, state: ClientState) -> None:
        if self._state is not ClientState.CLOSED:
            self._state = state
        self._changed.fire()

    def _next_request_id(self) -> str:
        self._request_ids += 1
        return f"trio_rt.client:{self._request_ids}"

    # -- supervisor ---------------------------------------------------------------------------
    async def _supervise(self) -> None:
        """The client's main task: connect, serve, reconnect, until closed or given up."""
        self._supervisor_task = trio.lowlevel.current_task()
        ending: ClientClosed | None = None
        try:
            with self._run_scope:
                ending = await self._connection_loop()
                self._finish(ending)
                await self._emit(ClientEvent("closed", error=ending.error if ending else None))
        finally:
            self._finish(ending)
            self._done.set()
        if self._listener_error is not None:
            raise self._listener_error

    def _finish(self, ending: ClientClosed | None) -> None:
        """Enter CLOSED (idempotent): fail what waits, discard what is queued."""
        if self._state is ClientState.CLOSED:
            return
        self._closing = True
        if ending is not None:
            self._close_error = ending.error
            self._close_message = str(ending)
        self._state = ClientState.CLOSED
        self._inbox_closed = True
        self._inbox_lot.unpark_all()
        self.stats.discarded += self._queued
        for item in self._outbox:
            if item.waiter is not None and item.kind == _LEAVE:
                item.waiter.succeed()  # the client is in no room any more
        self._outbox.clear()
        self._queued = 0
        self._settled_seq = self._enqueued_seq
        for waiter in self._rooms.values():
            waiter.fail(self._closed_exception)
        self._rooms.clear()
        for sub in self._subscriptions.values():
            sub.live.fail(self._closed_exception)
        self._changed.fire()

    async def _connection_loop(self) -> ClientClosed | None:
        """Attempts and backoff. Returns why the client stops (None: aclose())."""
        failures = 0  # consecutive failed attempts
        retry = 0  # backoff delays taken since the last successful connection
        connections = 0
        last_error: BaseException | None = None
        first = True
        while True:
            if self._closing:
                return None
            if not first:
                if self.max_attempts is not None and failures >= self.max_attempts:
                    return ClientClosed(
                        f"gave up after {failures} failed connection attempt(s): {last_error!r}",
                        error=last_error,
                    )
                await self._wait_for_room()
                if self._closing:
                    return None
                self._next_url()
                delay = self.backoff.delay(retry, self._rng)
                retry += 1
                hint = _retry_after(last_error)
                if hint is not None:
                    delay = min(self.backoff.max_delay, max(delay, hint))
                log.info("reconnecting to %s in %.2fs (attempt %d)", self.url, delay, failures + 1)
                await self._emit(
                    ClientEvent("reconnecting", attempt=failures + 1, delay=delay, error=last_error)
                )
                if self._closing:
                    return None
                with trio.CancelScope() as self._attempt_scope:
                    await trio.sleep(delay)
                self._attempt_scope = None
                if self._closing:
                    return None
            first = False

            outcome = await self._attempt(connections + 1)
            if outcome.live:
                connections += 1
                failures = 0
                retry = 0
            elif not outcome.closed_by_user and not isinstance(outcome.error, ReceiveOverflow):
                # (An overflow during the rejoins' replay is not a failure of the server.)
                failures += 1
                self.stats.failed_attempts += 1
                log.info("connection attempt to %s failed: %r", self.url, outcome.error)
            last_error = outcome.error

            ending: ClientClosed | None = None
            stop = outcome.closed_by_user or self._closing
            if (
                not stop
                and outcome.error is not None
                and not isinstance(outcome.error, HeartbeatTimeout | ReceiveOverflow)
                and self._is_fatal(outcome.error)
            ):
                stop = True
                ending = ClientClosed(f"fatal error: {outcome.error!r}", error=outcome.error)
            if outcome.live:
                if stop:
                    self._finish(ending)
                else:
                    self._set_state(ClientState.RECONNECTING)
                await self._emit(
                    ClientEvent(
                        "disconnected",
                        close_code=outcome.close_code,
                        close_reason=outcome.close_reason,
                        error=None if outcome.closed_by_user else outcome.error,
                    )
                )
            if stop:
                return ending

    async def _wait_for_room(self) -> None:
        """Under the "reconnect" policy, wait before an attempt until the app has read the
        receive buffer down to half: a new connection would overflow it again at once."""
        if self._inbox_policy != "reconnect":
            return
        await self._wait_for_app()

    async def _wait_for_app(self) -> None:
        """Wait until the app has read the receive buffer down to `_room_mark()`."""
        try:
            while len(self._inbox) > self._room_mark() and not self._closing:
                self._waiting_for_room = True
                await self._changed.wait()
        finally:
            self._waiting_for_room = False

    def _next_url(self) -> None:
        """Move to the next URL (round-robin) for the coming attempt."""
        if len(self.urls) > 1:
            self._url_index = (self._url_index + 1) % len(self.urls)
            self.url = self.urls[self._url_index]

    async def _attempt(self, number: int) -> _Outcome:
        """One connection attempt and, if it succeeds, the whole life of that connection."""
        outcome = _Outcome()
        deadline = (
            math.inf if self._open_timeout is None else trio.current_time() + self._open_timeout
        )
        session: _Session | None = None
        with trio.CancelScope(deadline=deadline) as scope:
            self._attempt_scope = scope
            try:
                headers = await self._resolve_headers()
                token = await self._resolve_token()
                if token is not None:
                    base = list(headers.items() if isinstance(headers, Mapping) else headers or ())
                    headers = [*base, ("Authorization", f"Bearer {token}")]
                # Everything tied to the connection runs in this nursery: websockets' own tasks
                # (in _hold_open's task), the heartbeat, and the session. Its scope is cancelled
                # when the connection ends, however it ends: the client never waits for
                # websockets' frame reader to notice by itself (it may wait forever on its
                # flow control once its stream was closed while reading was paused).
                async with trio.open_nursery() as transport:
                    try:
                        ws = await transport.start(self._hold_open, headers)
                        session = self._session = _Session(ws, transport.cancel_scope)
                        session.token_expires_at = _token_exp(token)
                        if self._ping_interval is not None:
                            transport.start_soon(self._heartbeat, session)
                        await self._run_session(session, scope, outcome, number)
                    except Exception as exc:
                        outcome.error = exc
                    finally:
                        transport.cancel_scope.cancel()
            except Exception as exc:
                outcome.error = exc
            finally:
                self._attempt_scope = None
                if session is not None:
                    self._end_session(session)
        if scope.cancelled_caught:
            if self._closing:
                outcome.closed_by_user = True
            elif outcome.error is None:
                outcome.error = TimeoutError(
                    f"no welcome and room confirmations within open_timeout={self._open_timeout}s"
                )
        if session is not None:
            code = session.ws.close_code
            if code is not None:
                outcome.close_code = code
                outcome.close_reason = session.ws.close_reason or ""
            if session.drop_error is not None and not outcome.closed_by_user:
                outcome.error = session.drop_error
            if outcome.error is None and not outcome.closed_by_user:
                outcome.error = session.close_exc
        return outcome

    async def _hold_open(
        self,
        headers: HeadersLike | None,
        *,
        task_status: trio.TaskStatus[ClientConnection] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Open the WebSocket, hand it to the attempt and keep it open until cancelled.

        Cancelling this task ends websockets' nursery whatever its tasks are waiting for (on
        the way out websockets tries a close frame, then closes the TCP connection)."""
        async with self._connect(headers) as ws:
            task_status.started(ws)
            await trio.sleep_forever()

    async def _heartbeat(self, session: _Session) -> None:
        """Ping every ping_interval; drop the connection when a pong is ping_timeout late.

        This does not rely on the app reading, nor on websockets' keepalive (whose timeout
        path writes a close frame first, which can wait forever on a dead peer)."""
        interval = self._ping_interval
        assert interval is not None
        limit = math.inf if self._ping_timeout is None else self._ping_timeout
        ws = session.ws
        while True:
            await trio.sleep(interval)
            with trio.move_on_after(limit) as waited:
                try:
                    pong = await ws.ping()
                    await pong.wait()
                except ConnectionClosed as exc:
                    self._ended(session, exc)
                    return
            if waited.cancelled_caught:
                self.stats.heartbeat_timeouts += 1
                log.warning("no pong from %s within %ss: dropping the connection", self.url, limit)
                self._drop(session, HeartbeatTimeout(f"no pong within ping_timeout={limit}s"))
                return

    def _ended(self, session: _Session, exc: ConnectionClosed) -> None:
        """A task of the session met the end of the connection. The reader usually sees it
        first, but not while it waits for the app (receive_overflow="wait"): whoever meets
        it ends the session. (It does not cancel anything: a closing handshake in progress
        goes on, within its bound.)"""
        if not session.ended:
            session.close_exc = exc
            session.ended = True
            self._changed.fire()

    def _drop(self, session: _Session, error: ClientError) -> None:
        """The client gives up on this connection: cancel everything tied to it (the TCP
        connection is closed on the way out). `error` becomes the attempt's error."""
        if not session.ended:
            session.drop_error = error
            session.ended = True
        self._changed.fire()
        session.scope.cancel()

    def _connect(self, headers: HeadersLike | None) -> connect:
        return connect(
            self.url,
            additional_headers=headers,
            compression="deflate" if self._compression else None,
            open_timeout=None,  # the attempt's cancel scope bounds handshake + welcome + rejoins
            ping_interval=None,  # the client's own heartbeat (_heartbeat) checks liveness
            close_timeout=self._close_timeout,
            max_size=self._max_size,
            ssl=self._ssl,
            proxy=self._proxy,
        )

    async def _resolve_headers(self) -> HeadersLike | None:
        headers = self._headers
        if headers is None or not callable(headers):
            return headers
        result = headers()
        if inspect.isawaitable(result):
            return await result
        return result

    async def _resolve_token(self) -> str | None:
        provider = self._token
        if provider is None or isinstance(provider, str):
            return provider
        result = provider()
        token = await result if inspect.isawaitable(result) else result
        if not isinstance(token, str) or not token:
            raise TypeError("the token provider must return a non-empty string")
        return token

    async def _refresh_loop(self, session: _Session) -> None:
        """While connected: shortly before the token expires, get a fresh one and send it
        in-band. Stops after a refusal (the server then closes with 4004 at expiry and the
        reconnect takes a fresh token) or when the token has no readable `exp`."""
        margin = self._refresh_margin
        assert margin is not None
        ws = session.ws
        while True:
            exp = session.token_expires_at
            if exp is None:
                return
            await trio.sleep(max(0.0, exp - margin - time.time()))
            if session.token_expires_at != exp:
                continue  # moved meanwhile
            try:
                token = await self._resolve_token()
            except Exception:
                log.exception("the token provider failed; not refreshing in-band")
                session.token_expires_at = None
                return
            assert token is not None
            new_exp = _token_exp(token)
            if new_exp is None or new_exp <= exp:
                log.warning("the token provider returned no fresher token; not refreshing")
                session.token_expires_at = None
                return
            rid = self._next_request_id()
            session.refresh_ids.add(rid)
            session.token_expires_at = new_exp  # until the reply says otherwise
            try:
                await ws.send(_encode({"type": "refresh", "token": token, "id": rid}))
            except ConnectionClosed as exc:
                self._ended(session, exc)
                return
            self.stats.refreshes += 1

    async def _run_session(
        self, session: _Session, scope: trio.CancelScope, outcome: _Outcome, number: int
    ) -> None:
        ws = session.ws
        welcome = await self._receive_welcome(ws)
        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_loop, session)
            try:
                await self._restore(session, welcome, number)
            except Exception as exc:  # ConnectionClosed, or the on_connect hook failed
                failure = exc
            if failure is None and session.ended:
                # (A dropped session's scope is cancelled too; this only decides what the
                # attempt reports if the cancellation has not landed yet.)
                failure = session.drop_error or session.close_exc
            if failure is not None or self._closing:
                nursery.cancel_scope.cancel()
            else:
                # Live. No checkpoint between the _closing check above and _live being set, so
                # aclose() either cancelled the attempt or will request a graceful close.
                scope.deadline = math.inf
                self._live = session
                outcome.live = True
                self.welcome = welcome
                self.stats.connections += 1
                self._set_state(ClientState.CONNECTED)
                log.info("connected to %s (connection %d)", self.url, number)
                for room, error in session.failed_rooms:
                    await self._emit(ClientEvent("rejoin_failed", room=room, error=error))
                await self._emit(ClientEvent("connected", attempt=number, welcome=welcome))
                nursery.start_soon(self._write_loop, session)
                if callable(self._token) and self._refresh_margin is not None:
                    nursery.start_soon(self._refresh_loop, session)
                while not session.ended and not session.close_requested:
                    await self._changed.wait()
                if session.close_requested and not session.ended:
                    with trio.move_on_after(self._close_timeout):
                        while (self._outbox or session.writing) and not session.ended:
                            await self._changed.wait()
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if self._closing:
            outcome.closed_by_user = True
            if not session.ended:
                # websockets bounds the wait for the server's close frame, not the write of
                # ours (a full socket buffer): bound both; the attempt then drops the TCP
                # connection whatever happened.
                with trio.move_on_after(self._close_timeout):
                    await self._close_gracefully(ws)

    async def _receive_welcome(self, ws: ClientConnection) -> Message:
        """Read up to the welcome. ``error`` messages before it are delivered to the app (the
        server may explain a close that follows); anything else violates the protocol."""
        while True:
            raw = await ws.recv()
            message = _decode(raw)
            if message is None:
                raise ProtocolViolation(f"expected a welcome message, got {raw[:200]!r}")
            self.stats.received += 1
            if message["type"] == "welcome":
                return message
            if message["type"] != "error":
                raise ProtocolViolation(
                    f"expected a welcome message, got a {message['type']!r} message"
                )
            self._deliver(message)

    async def _restore(self, session: _Session, welcome: Message, number: int) -> None:
        """Rejoin the remembered rooms, send the on_connect messages, await the room replies."""
        ws = session.ws
        rooms = list(self._rooms.items())
        for room, waiter in rooms:
            rid = self._next_request_id()
            session.pending[rid] = _Request(_JOIN, room, waiter)
            session.restore_ids.add(rid)
            session.join_sent.add(room)
            await ws.send(_encode(self._join_message(room, rid)))
        self._by_server_id.clear()
        for sub in self._subscriptions.values():
            sub.server_id = None  # the ids of the previous connection mean nothing here
        for key, sub in list(self._subscriptions.items()):
            if self._subscriptions.get(key) is sub:  # not unsubscribed meanwhile
                await ws.send(_encode(self._subscribe_message(key, sub, session)))
        if self._on_connect is not None:
            info = ConnectInfo(welcome, number, tuple(room for room, _ in rooms))
            result = self._on_connect(info)
            messages = await result if inspect.isawaitable(result) else result
            for message in messages:
                await ws.send(_encode(message))
        while not session.ended and not session.restore_ids.isdisjoint(session.pending):
            await self._changed.wait()

    async def _close_gracefully(self, ws: ClientConnection) -> None:
        """Closing handshake with 1000, reading (and dropping) what arrives meanwhile so the
        server's close frame is not stuck behind unread messages."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._discard_incoming, ws)
            await ws.aclose()
            nursery.cancel_scope.cancel()

    @staticmethod
    async def _discard_incoming(ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.recv()

    def _end_session(self, session: _Session) -> None:
        """The connection is over: what was tied to it is settled."""
        if self._session is session:
            self._session = None
        if self._live is session:
            self._live = None
        for request in session.pending.values():
            if request.kind == _LEAVE and request.waiter is not None:
                request.waiter.succeed()  # the room was left with the connection
        session.pending.clear()
        kept: deque[_Item] = deque()
        for item in self._outbox:
            if item.kind == _LEAVE:
                assert item.waiter is not None
                item.waiter.succeed()  # no connection holds the room any more
            elif item.kind != _UNSUBSCRIBE:  # subscriptions end with their connection
                kept.append(item)
        self._outbox = kept
        self._changed.fire()

    # -- per-connection tasks -----------------------------------------------------------------
    async def _read_loop(self, session: _Session) -> None:
        """Read every frame as soon as it arrives, whatever the app does: replies and positions
        are handled here, the rest goes to the receive buffer (which never makes this wait).
        So websockets never has a reason to stop reading the socket for long, and pongs,
        close frames and the end of the connection are always seen."""
        ws = session.ws
        try:
            while True:
                raw = await ws.recv()
                message = _decode(raw)
                if message is None:
                    self.stats.invalid += 1
                    log.warning("dropping an invalid message from %s: %r", self.url, raw[:200])
                    continue
                self.stats.received += 1
                deliveries = self._handle_message(session, message)
                full = False
                for one in deliveries:
                    full = self._deliver(one) or full
                while self._recovery_failed:
                    room, reason = self._recovery_failed.pop(0)
                    await self._emit(ClientEvent("recovery_failed", room=room, reason=reason))
                if full and self._inbox_policy == "wait":
                    # Backpressure: websockets stops reading the socket too. Pongs are not
                    # read meanwhile: the heartbeat drops a connection left unread too long.
                    await self._wait_for_app()
                elif full:
                    # Everything received is kept (its position too): the reconnect recovers
                    # from there once the app has caught up (_wait_for_room).
                    self.stats.overflows += 1
                    log.warning(
                        "the app is %d messages behind: dropping the connection to %s",
                        len(self._inbox),
                        self.url,
                    )
                    self._drop(session, ReceiveOverflow(f"{len(self._inbox)} messages unread"))
                    return
        except ConnectionClosed as exc:
            # Only the end of the connection sets `ended` here; a cancelled reader does not.
            self._ended(session, exc)

    def _join_message(self, room: str, rid: str) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "join_room", "room": room, "id": rid}
        since = self._positions.get(room)
        if since is not None:
            message["since"] = since
        return message

    def _subscribe_message(self, key: str, sub: _Subscription, session: _Session) -> Message:
        rid = self._next_request_id()
        session.subscribe_ids[rid] = (key, sub.table)
        message: dict[str, Any] = {
            "type": "subscribe",
            "table": sub.table,
            "filters": sub.filters,
            "id": rid,
        }
        if sub.position is not None:
            message["since"] = sub.position
        return message

    def _handle_message(self, session: _Session, message: Message) -> list[Message]:
        """Apply what a server message means for rooms, positions, subscriptions and requests.

        Returns the messages to deliver to the app, in order: usually `message` itself, nothing
        for a consumed reply or a duplicate, several when a `subscribed` reply releases the
        changes replayed before it. Message types the client does not know reach the app
        untouched."""
        mtype = message["type"]
        rid = message.get("id")
        if mtype == "data_update":
            return self._on_data_update(session, message)
        # A reply answers a request this client has pending AND has a reply type; a message
        # that merely carries an application field named `id` is an ordinary message.
        if mtype in _SUBSCRIBE_REPLIES and isinstance(rid, str) and rid in session.subscribe_ids:
            return self._on_subscribe_reply(session, message, rid)
        if (
            mtype in _UNSUBSCRIBE_REPLIES
            and isinstance(rid, str)
            and rid in session.unsubscribe_ids
        ):
            session.unsubscribe_ids.discard(rid)
            return []  # the reply to an unsubscribe() (or to a dropped subscription)
        if self._track_room_position(message):
            return []
        if self._handle_control(session, message):
            return []
        return [message]

    def _on_data_update(self, session: _Session, message: Message) -> list[Message]:
        sid = message.get("subscription")
        if not isinstance(sid, str):
            return [message]
        if sid in session.abandoned:
            return []  # a change of a subscription this client dropped, still in flight
        key = self._by_server_id.get(sid)
        if key is None:
            table = message.get("table")
            if any(t == table or table is None for _, t in session.subscribe_ids.values()):
                # Most likely the replay of a subscribe in flight: the server sends it before
                # `subscribed` names the id. Held until a reply claims it.
                session.held.setdefault(sid, []).append(message)
                return []
            return [message]  # not a subscription of this client's (a raw `subscribe` sent)
        return self._claim_update(key, message)

    def _claim_update(self, key: str, message: Message) -> list[Message]:
        """A change of subscription `key`: dropped when already received, else delivered with
        the key; its position is where a renewal starts."""
        sub = self._subscriptions.get(key)
        if sub is None:
            return []
        event = message.get("event")
        position = event.get("position") if isinstance(event, dict) else None
        if _is_position(position):
            if not self._received(self._sub_seen, key, position):
                self.stats.duplicates += 1
                return []
            sub.position = _later(sub.position, position)
        message["key"] = key
        return [message]

    def _on_subscribe_reply(self, session: _Session, message: Message, rid: str) -> list[Message]:
        mtype = message["type"]
        key, table = session.subscribe_ids.pop(rid)
        sub = self._subscriptions.get(key)
        sid = message.get("subscription")
        held = session.held.pop(sid, []) if isinstance(sid, str) else []
        deliveries: list[Message] = []
        if mtype == "subscribed":
            if sub is None:
                # Unsubscribed while the request was in flight: the server holds it now.
                if isinstance(sid, str):
                    session.abandoned.add(sid)
                    session.server_ids.add(sid)
                    self._outbox.appendleft(_Item(_UNSUBSCRIBE, room=sid))
                    self._changed.fire()
            else:
                if isinstance(sid, str):
                    sub.server_id = sid
                    self._by_server_id[sid] = key
                    session.server_ids.add(sid)
                for update in held:
                    deliveries.extend(self._claim_update(key, update))
                position = message.get("position")
                if _is_position(position):
                    self._epoch_seen(self._sub_seen, key, position)
                    sub.position = _later(sub.position, position)
                if message.get("recovered") is False:
                    self._recovery_failed.append(
                        ("subscription:" + key, str(message.get("reason")))
                    )
                sub.live.succeed()
        else:  # "error" (_SUBSCRIBE_REPLIES)
            if sub is not None:  # else: unsubscribed meanwhile, nobody to tell
                del self._subscriptions[key]
                self._sub_seen.pop(key, None)
                raised = sub.awaited and not sub.live.done  # `await subscribe()` hears it
                sub.live.fail(lambda: ServerError(message))
                if not raised:
                    message["key"] = key
                    deliveries.append(message)
        # Held changes no subscribe in flight can claim any more are not this client's
        # subscriptions' (a raw `subscribe` the app sent): delivered untouched.
        if not any(t == table for _, t in session.subscribe_ids.values()):
            for other in [s for s, msgs in session.held.items() if msgs[0].get("table") == table]:
                deliveries.extend(session.held.pop(other))
        return deliveries

    def _received(
        self, trackers: dict[str, _SeenOffsets], stream: str, position: dict[str, Any]
    ) -> bool:
        """Record a received offset of `stream`; False when this client already had it."""
        return self._epoch_seen(trackers, stream, position).add(position["offset"])

    @staticmethod
    def _epoch_seen(
        trackers: dict[str, _SeenOffsets], stream: str, position: dict[str, Any]
    ) -> _SeenOffsets:
        """The received offsets of `stream` in `position`'s epoch (a new epoch starts empty)."""
        seen = trackers.get(stream)
        if seen is None or seen.epoch != position["epoch"]:
            seen = trackers[stream] = _SeenOffsets(position["epoch"])
        return seen

    def _recovery_lost(self, room: str, reason: str) -> None:
        """What `room` missed cannot be replayed: report it once and refetch the latest page."""
        self._recovery_failed.append((room, reason))
        history = {"type": "history", "room": room, "limit": self.refetch_limit}
        self._outbox.appendleft(_Item(_DATA, text=_encode(history)))
        self._queued += 1
        self._changed.fire()

    def _track_room_position(self, message: Message) -> bool:
        """Positions and duplicates of the rooms this client is in. True: a duplicate (the app
        already has it: not delivered)."""
        room = message.get("room")
        if not isinstance(room, str) or room not in self._rooms:
            return False
        mtype = message["type"]
        position: object = message.get("position")
        if mtype == "room_joined":
            if message.get("recovered") is False:
                self._recovery_lost(room, str(message.get("reason")))
            if _is_position(position):
                # The room's position, sent as `since` after a reconnect. It marks nothing as
                # received: an offset at or below it that was still being written when the
                # client joined may come later, and is delivered.
                self._positions[room] = position
                self._epoch_seen(self._seen, room, position)
            return False
        if mtype == "room_gap":
            # A server announcing that this connection missed messages it cannot send: as a
            # failed recovery. The message itself reaches the app untouched.
            self._recovery_lost(room, str(message.get("reason", "gap")))
            return False
        if not _is_position(position):
            return False
        # A room message is positioned by its own offset; a `history` page (the server's
        # reply, whoever asked for it) only carries the room's current position. An `id` field
        # says nothing: applications may put one in their room messages.
        is_reply = mtype == "history" and isinstance(message.get("messages"), list)
        if not is_reply and not self._received(self._seen, room, position):
            self.stats.duplicates += 1
            return True
        self._positions[room] = _later(self._positions.get(room), position)
        return False

    def _handle_control(self, session: _Session, message: Message) -> bool:
        """Apply what a message means for rooms and requests. True: consumed (not delivered)."""
        mtype = message["type"]
        rid = message.get("id")
        if rid in session.refresh_ids and mtype in ("refreshed", "error"):
            session.refresh_ids.discard(rid)
            if mtype == "error":
                log.warning("in-band token refresh refused: %s", message.get("message"))
                session.token_expires_at = None  # the reconnect after 4004 takes a fresh token
            return True
        if (
            isinstance(rid, str)
            and mtype in ("room_joined", "room_left", "error")
            and rid in session.pending
        ):
            request = session.pending.pop(rid)
            room = request.room
            if request.kind == _JOIN:
                current = self._rooms.get(room)
                if mtype == "room_joined":
                    session.confirmed.add(room)
                    if current is not None:
                        current.succeed()
                elif mtype == "error":
                    session.join_sent.discard(room)
                    error = ServerError(message, room=room)
                    if current is not None and current is request.waiter:
                        del self._rooms[room]
                        current.fail(lambda: ServerError(message, room=room))
                        if rid in session.restore_ids:
                            session.failed_rooms.append((room, error))
                    elif current is not None:
                        # Left and joined again while this request was in flight: try again.
                        self._outbox.append(_Item(_JOIN, room=room, waiter=current))
            elif request.waiter is not None:  # _LEAVE
                if mtype == "error":
                    request.waiter.fail(lambda: ServerError(message, room=room))
                else:
                    request.waiter.succeed()
            self._changed.fire()
            return True
        if mtype in ("room_kicked", "room_left"):
            # Removed by the server (kicked, room deleted) or left by a raw leave_room message.
            name = message.get("room")
            if isinstance(name, str):
                session.join_sent.discard(name)
                session.confirmed.discard(name)
                self._forget_position(name)
                waiter = self._rooms.pop(name, None)
                if waiter is not None:
                    waiter.fail(lambda: ServerError(message, room=name))
                self._changed.fire()
        return False

    async def _write_loop(self, session: _Session) -> None:
        """Write the outbox in order. Each message is written at most once: it is removed from
        the outbox before the write, and not requeued if the write fails."""
        ws = session.ws
        while True:
            if not self._outbox:
                await self._changed.wait()
                continue
            if ws.state is not State.OPEN:
                return  # the reader sees the end of the connection and ends the session
            item = self._outbox.popleft()
            if item.kind == _DATA:
                self._queued -= 1
            text = self._render(item, session)
            if text is None:
                self._changed.fire()
                continue
            session.writing = True
            written = False
            try:
                await ws.send(text)
                written = True
            except ConnectionClosed as exc:
                self._ended(session, exc)
                return
            finally:
                session.writing = False
                if item.kind == _DATA:
                    self._settled_seq = max(self._settled_seq, item.seq)
                    if written:
                        self.stats.sent += 1
                    else:
                        self.stats.lost += 1
                self._changed.fire()

    def _render(self, item: _Item, session: _Session) -> str | None:
        """The frame for an outbox item on this connection, or None if there is nothing to do."""
        if item.kind == _DATA:
            return item.text
        room = item.room
        if item.kind == _JOIN:
            if self._rooms.get(room) is not item.waiter:
                return None  # left since: the leave_room call resolved this join
            if room in session.join_sent:
                if room in session.confirmed and item.waiter is not None:
                    item.waiter.succeed()
                return None  # already joined (or joining) on this connection
            rid = self._next_request_id()
            session.pending[rid] = _Request(_JOIN, room, item.waiter)
            session.join_sent.add(room)
            return _encode(self._join_message(room, rid))
        if item.kind == _SUBSCRIBE:
            sub = self._subscriptions.get(room)
            if (
                sub is None
                or sub.server_id is not None
                or any(key == room for key, _ in session.subscribe_ids.values())
            ):
                return None  # unsubscribed meanwhile, or already subscribed on this connection
            return _encode(self._subscribe_message(room, sub, session))
        if item.kind == _UNSUBSCRIBE:
            if room not in session.server_ids:
                return None  # another connection's subscription: it ended with it
            session.server_ids.discard(room)
            rid = self._next_request_id()
            session.unsubscribe_ids.add(rid)
            return _encode({"type": "unsubscribe", "subscription": room, "id": rid})
        # _LEAVE
        assert item.waiter is not None
        if room in self._rooms or room not in session.join_sent:
            item.waiter.succeed()  # joined again since, or not held by this connection
            return None
        rid = self._next_request_id()
        session.pending[rid] = _Request(_LEAVE, room, item.waiter)
        session.join_sent.discard(room)
        session.confirmed.discard(room)
        return _encode({"type": "leave_room", "room": room, "id": rid})

"""The client's public data types: its states, events, statistics, the ``on_connect`` hook's
argument, and the type aliases of its options. Sans-IO: plain values, no trio, no websockets.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias, TypeVar

__all__ = [
    "EVENT_TYPES",
    "ClientEvent",
    "ClientState",
    "ClientStats",
    "ConnectHook",
    "ConnectInfo",
    "EventType",
    "HeadersLike",
    "HeadersProvider",
    "Listener",
    "Message",
    "OverflowPolicy",
    "ReceiveOverflowPolicy",
    "TokenProvider",
]

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
    resent: int = 0  # publishes written again (same id) after their connection ended unanswered

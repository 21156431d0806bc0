"""trio_rt: real-time WebSocket applications on Trio's structured concurrency.

The public surface is re-exported here; modules starting with ``_`` are private.
"""

from typing import TYPE_CHECKING

from ._broker import Broker, BrokerUnavailable, MemoryBroker, MemoryHub
from ._connection import Connection, Request
from ._history import RoomHistory
from ._http import HttpResponse, Reject
from ._manager import ServerStats, WebSocketManager
from ._options import ServerOptions
from ._outbox import SlowConsumerPolicy
from ._permissions import CassandraPermissionStore, MemoryPermissionStore, PermissionStore
from ._protocol import CloseCode, ErrorCode, ProtocolError, StreamPosition
from ._ratelimit import Decision, LocalRateLimiter, Rate, RateLimiter
from ._rendezvous import rendezvous_owner, rendezvous_rank, rendezvous_score
from ._room_store import RoomSettings, RoomStore
from ._rooms import Room, RoomError
from ._streams import MemorySequencer, MemoryStreamStore, Sequencer, StreamEntry, StreamStore

__all__ = [
    "AuthError",
    "Broker",
    "BrokerUnavailable",
    "CassandraPermissionStore",
    "ChangeEvent",
    "ChangeLog",
    "ChangePublisher",
    "ChangeStreamManager",
    "Claims",
    "CloseCode",
    "Connection",
    "Decision",
    "ErrorCode",
    "HttpResponse",
    "JWKSKeySource",
    "JWTAuthenticator",
    "LocalRateLimiter",
    "MemoryBroker",
    "MemoryHub",
    "MemoryPermissionStore",
    "MemorySequencer",
    "MemoryStreamStore",
    "PermissionStore",
    "ProtocolError",
    "Rate",
    "RateLimiter",
    "RedisBroker",
    "RedisRateLimiter",
    "RedisSequencer",
    "Reject",
    "Request",
    "Room",
    "RoomError",
    "RoomHistory",
    "RoomSettings",
    "RoomStore",
    "Sequencer",
    "ServerOptions",
    "ServerRegistry",
    "ServerStats",
    "SlowConsumerPolicy",
    "StreamEntry",
    "StreamPosition",
    "StreamStore",
    "TokenVerifier",
    "WebSocketManager",
    "WebSocketMetrics",
    "extract_token",
    "rendezvous_owner",
    "rendezvous_rank",
    "rendezvous_score",
]

__version__ = "0.1.0"

if TYPE_CHECKING:  # the lazily imported names below, for type checkers
    from ._auth import (
        AuthError,
        Claims,
        JWKSKeySource,
        JWTAuthenticator,
        TokenVerifier,
        extract_token,
    )
    from ._changes import ChangeEvent, ChangeLog, ChangePublisher, ChangeStreamManager
    from ._metrics import WebSocketMetrics
    from ._redis_broker import RedisBroker
    from ._redis_ratelimit import RedisRateLimiter
    from ._redis_streams import RedisSequencer
    from ._registry import ServerRegistry


def __getattr__(name: str) -> object:
    # Redis support is imported on first use: importing trio_asyncio patches asyncio globally.
    if name == "RedisBroker":
        from ._redis_broker import RedisBroker

        return RedisBroker
    if name == "RedisSequencer":
        from ._redis_streams import RedisSequencer

        return RedisSequencer
    # Change streams need cassandra-driver (the `cassandra` extra): imported on first use.
    if name in ("ChangeStreamManager", "ChangeEvent", "ChangeLog", "ChangePublisher"):
        from . import _changes

        return getattr(_changes, name)
    if name == "RedisRateLimiter":
        from ._redis_ratelimit import RedisRateLimiter

        return RedisRateLimiter
    # JWT support needs pyjwt (the `auth` extra): imported on first use.
    if name in (
        "AuthError",
        "Claims",
        "JWKSKeySource",
        "JWTAuthenticator",
        "TokenVerifier",
        "extract_token",
    ):
        from . import _auth

        return getattr(_auth, name)
    if name == "ServerRegistry":
        from ._registry import ServerRegistry

        return ServerRegistry
    # Metrics need prometheus-client (the `metrics` extra): also imported on first use.
    if name == "WebSocketMetrics":
        from ._metrics import WebSocketMetrics

        return WebSocketMetrics
    raise AttributeError(f"module 'trio_rt' has no attribute {name!r}")

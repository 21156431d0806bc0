"""trio_rt: real-time WebSocket applications on Trio's structured concurrency.

The public surface is re-exported here; modules starting with ``_`` are private.

The core (``pip install trio_rt``: trio and websockets only) is imported at once. Names that
need an extra are imported on first use, from one table (`_LAZY`): ``trio_rt.RedisBroker``
imports Redis support then. Without its extra such a name raises ImportError naming it::

    ImportError: trio_rt.RedisBroker needs the 'redis' extra: pip install 'trio_rt[redis]'
    (No module named 'hiredis')

``__all__`` lists the core names and the lazy names whose extra is installed, so
``from trio_rt import *`` works with any set of extras.
"""

from importlib import import_module as _import_module
from typing import TYPE_CHECKING

from ._cli import serve_until_signalled
from ._core.acks import AckResult, IdempotencyStore, MemoryIdempotencyStore
from ._core.errors import TrioRTError
from ._core.options import ServerOptions, ServerOptionsDict
from ._core.outbox import SlowConsumerPolicy
from ._core.protocol import CloseCode, ErrorCode, ProtocolError, StreamPosition
from ._core.ratelimit import Decision, LocalRateLimiter, Rate, RateLimiter
from ._core.rendezvous import rendezvous_owner, rendezvous_rank, rendezvous_score
from ._core.rooms import Room, RoomError
from ._core.stats import ServerStats
from ._engine.broker import Broker, BrokerUnavailable, MemoryBroker, MemoryHub
from ._engine.connection import Connection, ConnectionState, Request
from ._engine.history import RoomHistory
from ._engine.http import HttpResponse, Reject
from ._engine.manager import WebSocketManager
from ._engine.permissions import MemoryPermissionStore, PermissionStore
from ._engine.presence import (
    MemoryPresence,
    PresenceEntry,
    PresenceManager,
    PresenceResult,
    PresenceService,
    PresenceStats,
)
from ._engine.publish import Publisher, PublishRefused
from ._engine.room_store import RoomSettings, RoomStore
from ._engine.server_api import APICall, APIKey, ServerAPI
from ._engine.streams import MemorySequencer, MemoryStreamStore, Sequencer, StreamEntry, StreamStore
from ._engine.watch_positions import MemoryWatchPositions, WatchPositions
from ._extras import EXTRAS as _EXTRAS
from ._extras import extra_installed as _extra_installed
from ._extras import missing_extra_error as _missing_extra_error

__version__ = "0.1.0"

# The names imported on first use: name -> (the module that defines or re-exports it, the
# extra it needs).
_LAZY: dict[str, tuple[str, str]] = {
    "AuthError": ("._engine.auth", "auth"),
    "Claims": ("._engine.auth", "auth"),
    "JWKSKeySource": ("._engine.auth", "auth"),
    "JWTAuthenticator": ("._engine.auth", "auth"),
    "TokenVerifier": ("._engine.auth", "auth"),
    "extract_token": ("._engine.auth", "auth"),
    # Change streams run on trio_rt.cassandra's Database.
    "ChangeEvent": ("._engine.changes", "cassandra"),
    "ChangeLog": ("._engine.changes", "cassandra"),
    "ChangePublisher": ("._engine.changes", "cassandra"),
    "ChangeStreamManager": ("._engine.changes", "cassandra"),
    "Watch": ("._engine.changes", "cassandra"),
    "CassandraPermissionStore": (".cassandra", "cassandra"),
    # The Redis edge: trio_rt.redis (a subpackage that names its extra when it is missing).
    "RedisBroker": (".redis", "redis"),
    "RedisIdempotencyStore": (".redis", "redis"),
    "RedisPresence": (".redis", "redis"),
    "RedisRateLimiter": (".redis", "redis"),
    "RedisSequencer": (".redis", "redis"),
    "ServerRegistry": (".redis", "redis"),
    "WebSocketMetrics": ("._engine.metrics", "metrics"),
}

if TYPE_CHECKING:  # the lazy names above, for type checkers (tests/test_exports.py compares)
    from ._engine.auth import (
        AuthError,
        Claims,
        JWKSKeySource,
        JWTAuthenticator,
        TokenVerifier,
        extract_token,
    )
    from ._engine.changes import (
        ChangeEvent,
        ChangeLog,
        ChangePublisher,
        ChangeStreamManager,
        Watch,
    )
    from ._engine.metrics import WebSocketMetrics
    from .cassandra import CassandraPermissionStore
    from .redis import (
        RedisBroker,
        RedisIdempotencyStore,
        RedisPresence,
        RedisRateLimiter,
        RedisSequencer,
        ServerRegistry,
    )

__all__ = [
    "APICall",
    "APIKey",
    "AckResult",
    "Broker",
    "BrokerUnavailable",
    "CloseCode",
    "Connection",
    "ConnectionState",
    "Decision",
    "ErrorCode",
    "HttpResponse",
    "IdempotencyStore",
    "LocalRateLimiter",
    "MemoryBroker",
    "MemoryHub",
    "MemoryIdempotencyStore",
    "MemoryPermissionStore",
    "MemoryPresence",
    "MemorySequencer",
    "MemoryStreamStore",
    "MemoryWatchPositions",
    "PermissionStore",
    "PresenceEntry",
    "PresenceManager",
    "PresenceResult",
    "PresenceService",
    "PresenceStats",
    "ProtocolError",
    "PublishRefused",
    "Publisher",
    "Rate",
    "RateLimiter",
    "Reject",
    "Request",
    "Room",
    "RoomError",
    "RoomHistory",
    "RoomSettings",
    "RoomStore",
    "Sequencer",
    "ServerAPI",
    "ServerOptions",
    "ServerOptionsDict",
    "ServerStats",
    "SlowConsumerPolicy",
    "StreamEntry",
    "StreamPosition",
    "StreamStore",
    "TrioRTError",
    "WatchPositions",
    "WebSocketManager",
    "rendezvous_owner",
    "rendezvous_rank",
    "rendezvous_score",
    "serve_until_signalled",
]
if TYPE_CHECKING:
    __all__ += [
        "AuthError",
        "CassandraPermissionStore",
        "ChangeEvent",
        "ChangeLog",
        "ChangePublisher",
        "ChangeStreamManager",
        "Claims",
        "JWKSKeySource",
        "JWTAuthenticator",
        "RedisBroker",
        "RedisIdempotencyStore",
        "RedisPresence",
        "RedisRateLimiter",
        "RedisSequencer",
        "ServerRegistry",
        "TokenVerifier",
        "Watch",
        "WebSocketMetrics",
        "extract_token",
    ]


if not TYPE_CHECKING:  # at run time: only what will import, so `import *` always works
    __all__ += sorted(name for name, (_, extra) in _LAZY.items() if _extra_installed(extra))


def __getattr__(name: str) -> object:
    try:
        module_name, extra = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'trio_rt' has no attribute {name!r}") from None
    try:
        module = _import_module(module_name, __name__)
    except ImportError as exc:
        # A subpackage (trio_rt.redis) raises its own "needs the extra" ImportError from the
        # ModuleNotFoundError: look at that one, and name the attribute asked for.
        missing = exc if isinstance(exc, ModuleNotFoundError) else exc.__cause__
        if isinstance(missing, ModuleNotFoundError) and (
            (missing.name or "").partition(".")[0] in _EXTRAS[extra]
        ):
            raise _missing_extra_error(f"trio_rt.{name}", extra, missing) from exc
        raise
    value = getattr(module, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

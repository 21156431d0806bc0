"""Server options, validated once at construction so a bad value fails before anything listens.

Two views of the same options, kept equal by tests/core/test_options.py:

- `ServerOptions`, a frozen dataclass: what the server reads (``manager.options``), an object
  a caller can build once, check, and pass around.
- `ServerOptionsDict`, a TypedDict of the same names and types, every key optional: for
  ``**options: Unpack[ServerOptionsDict]`` signatures (a type checker then checks each
  keyword) and for option mappings a caller builds; `ServerOptions.from_dict` turns one into
  options.

Counts and durations are checked by trio_rt/_core/checks.py (one rule, one wording), re-exported
here for the components that validate their own arguments.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import TypedDict

from .checks import (
    int_problem,
    number_problem,
    require,
    require_positive_ints,
    require_positive_numbers,
)
from .outbox import SlowConsumerPolicy

__all__ = [
    "ServerOptions",
    "ServerOptionsDict",
    "int_problem",
    "number_problem",
    "require",
    "require_positive_ints",
    "require_positive_numbers",
]


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s?#]+")  # RFC 6454 serialized origin


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Every knob of `WebSocketManager`; see docs/server.md for what each does and why."""

    host: str = "127.0.0.1"
    port: int = 3001
    max_connections: int | None = 10_000
    heartbeat_interval: float | None = 30.0  # seconds between pings; None disables heartbeats
    heartbeat_timeout: float | None = None  # seconds to wait for the pong; default = interval
    compression: bool = True  # permessage-deflate
    # With compression: False makes the server keep no compression context between messages
    # (server_no_context_takeover in every handshake): a broadcast is then compressed once for
    # all such clients, and no compressor is kept per connection; messages compress less.
    compression_context_takeover: bool = True
    max_message_size: int = 1024 * 1024  # bytes of one incoming message; larger -> close 1009
    outbox_size: int = 1024  # messages queued per connection before the slow-consumer policy
    outbox_max_bytes: int = 4 * 1024 * 1024
    slow_consumer_policy: SlowConsumerPolicy = SlowConsumerPolicy.DISCONNECT
    handshake_timeout: float = 10.0
    close_timeout: float = 5.0  # per connection: drain the outbox + closing handshake
    shutdown_timeout: float = 10.0  # graceful shutdown of the whole server
    auto_create_rooms: bool = True
    server_id: str | None = None  # default: random; names this process in the cluster
    channel_prefix: str = "trio_rt"
    # Subprotocols the server may select, in the client's order of preference. A browser that
    # offers any subprotocol (e.g. a `bearer.<token>` entry for auth) needs one selected back.
    # Any sequence of strings; kept as a tuple.
    subprotocols: Sequence[str] = ("trio_rt.v1",)
    # -- security (docs/security.md) --
    # Messages per rate_limit_period per user (per connection when anonymous); None: no limit.
    rate_limit: int | None = 100
    rate_limit_period: float = 60.0
    rate_limit_burst: int | None = None  # bucket size; default rate_limit
    # Per message type: its own budget (messages per rate_limit_period) instead of the
    # default one; None exempts the type. Built-in types count too ("join_room", "ping"...).
    rate_limits: Mapping[str, int | None] = field(default_factory=dict)
    rate_limit_max_refusals: int = 20  # refused messages in a row -> close 4029
    max_connections_per_ip: int | None = None  # per peer address; HTTP 429 beyond
    max_connections_per_user: int | None = None  # per conn.user_id; HTTP 429 beyond
    max_rooms_per_connection: int | None = 100
    max_subscriptions_per_connection: int | None = 100  # table subscriptions
    # Origin allowlist ("https://app.example.com"); None accepts any Origin. A disallowed
    # Origin gets HTTP 403 before the upgrade. Kept as a tuple of lowercased origins.
    allowed_origins: Sequence[str] | None = None
    allow_missing_origin: bool = True  # no Origin header: not a browser (browsers always send it)
    # Process-wide GC tuning, off by default (a library must not surprise its host): while
    # serving, every this many seconds, collect the young generations and gc.freeze() what
    # survives, so automatic collections stop traversing long-lived connections; every 10th
    # time a full collection first (see docs/server.md and docs/performance.md).
    gc_freeze_interval: float | None = None
    serve_client_js: bool = True  # GET /trio_rt.js: the browser client (docs/browser.md)
    # -- several worker processes on one port (`trio-rt serve --workers N`, docs/deployment.md) --
    # Bind with SO_REUSEPORT (Linux), so that several processes listen on one host:port and the
    # kernel spreads new connections over them. Set by `trio-rt serve --workers N`.
    reuse_port: bool = False
    # This process's worker number (0..N-1) under `trio-rt serve --workers N`; None: not a
    # worker. Shown by /health and /metrics, and appended to server_id ("<id>-w<n>").
    worker_id: int | None = None

    def __post_init__(self) -> None:
        errors: list[str | None] = []  # every problem, reported at once (None: a check passed)
        if not isinstance(self.host, str) or not self.host:
            errors.append(f"host must be a non-empty string, not {self.host!r}")
        if (
            isinstance(self.port, bool)
            or not isinstance(self.port, int)
            or not (0 <= self.port <= 65535)
        ):
            errors.append(f"port must be an integer in 0..65535, not {self.port!r}")
        errors.append(int_problem("max_connections", self.max_connections, allow_none=True))
        errors.append(
            number_problem("heartbeat_interval", self.heartbeat_interval, allow_none=True)
        )
        errors.append(number_problem("heartbeat_timeout", self.heartbeat_timeout, allow_none=True))
        if not isinstance(self.compression, bool):
            errors.append(f"compression must be True or False, not {self.compression!r}")
        if not isinstance(self.compression_context_takeover, bool):
            errors.append(
                "compression_context_takeover must be True or False,"
                f" not {self.compression_context_takeover!r}"
            )
        errors.append(int_problem("max_message_size", self.max_message_size))
        errors.append(int_problem("outbox_size", self.outbox_size))
        errors.append(int_problem("outbox_max_bytes", self.outbox_max_bytes))
        try:
            object.__setattr__(
                self, "slow_consumer_policy", SlowConsumerPolicy(self.slow_consumer_policy)
            )
        except ValueError:
            choices = ", ".join(p.value for p in SlowConsumerPolicy)
            errors.append(
                f"slow_consumer_policy must be one of {choices}, not {self.slow_consumer_policy!r}"
            )
        errors.append(number_problem("handshake_timeout", self.handshake_timeout))
        errors.append(number_problem("close_timeout", self.close_timeout))
        errors.append(number_problem("shutdown_timeout", self.shutdown_timeout))
        errors.append(
            number_problem("gc_freeze_interval", self.gc_freeze_interval, allow_none=True)
        )
        if self.server_id is not None and (
            not isinstance(self.server_id, str) or not self.server_id
        ):
            errors.append(f"server_id must be a non-empty string, not {self.server_id!r}")
        if not isinstance(self.channel_prefix, str) or not self.channel_prefix:
            errors.append(f"channel_prefix must be a non-empty string, not {self.channel_prefix!r}")
        if isinstance(self.subprotocols, str) or not all(
            isinstance(p, str) and _TOKEN.fullmatch(p) for p in self.subprotocols
        ):
            errors.append(
                "subprotocols must be a sequence of HTTP tokens (e.g. 'trio_rt.v1'), "
                f"not {self.subprotocols!r}"
            )
        else:
            object.__setattr__(self, "subprotocols", tuple(self.subprotocols))
        errors.append(int_problem("rate_limit", self.rate_limit, allow_none=True))
        errors.append(number_problem("rate_limit_period", self.rate_limit_period))
        errors.append(int_problem("rate_limit_burst", self.rate_limit_burst, allow_none=True))
        if not isinstance(self.rate_limits, Mapping) or not all(
            isinstance(k, str) and k and int_problem(k, v, allow_none=True) is None
            for k, v in self.rate_limits.items()
        ):
            errors.append(
                "rate_limits must map message types to a positive integer or None, "
                f"not {self.rate_limits!r}"
            )
        else:
            object.__setattr__(self, "rate_limits", MappingProxyType(dict(self.rate_limits)))
        errors.append(int_problem("rate_limit_max_refusals", self.rate_limit_max_refusals))
        errors.append(
            int_problem("max_connections_per_ip", self.max_connections_per_ip, allow_none=True)
        )
        errors.append(
            int_problem("max_connections_per_user", self.max_connections_per_user, allow_none=True)
        )
        errors.append(
            int_problem("max_rooms_per_connection", self.max_rooms_per_connection, allow_none=True)
        )
        errors.append(
            int_problem(
                "max_subscriptions_per_connection",
                self.max_subscriptions_per_connection,
                allow_none=True,
            )
        )
        if self.allowed_origins is not None:
            if isinstance(self.allowed_origins, str) or not all(
                isinstance(o, str) and _ORIGIN.fullmatch(o) for o in self.allowed_origins
            ):
                errors.append(
                    "allowed_origins must be None or a sequence of origins such as "
                    "'https://app.example.com' (scheme://host[:port]), "
                    f"not {self.allowed_origins!r}"
                )
            else:
                object.__setattr__(
                    self, "allowed_origins", tuple(o.lower() for o in self.allowed_origins)
                )
        if not isinstance(self.allow_missing_origin, bool):
            errors.append(
                f"allow_missing_origin must be True or False, not {self.allow_missing_origin!r}"
            )
        if not isinstance(self.serve_client_js, bool):
            errors.append(f"serve_client_js must be True or False, not {self.serve_client_js!r}")
        if not isinstance(self.reuse_port, bool):
            errors.append(f"reuse_port must be True or False, not {self.reuse_port!r}")
        if self.worker_id is not None and (
            isinstance(self.worker_id, bool)
            or not isinstance(self.worker_id, int)
            or self.worker_id < 0
        ):
            errors.append(f"worker_id must be None or an integer >= 0, not {self.worker_id!r}")
        found = [e for e in errors if e is not None]
        if found:
            raise ValueError("invalid WebSocketManager options: " + "; ".join(found))
        if self.heartbeat_interval is not None and self.heartbeat_timeout is None:
            object.__setattr__(self, "heartbeat_timeout", self.heartbeat_interval)

    @classmethod
    def names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, options: ServerOptionsDict) -> ServerOptions:
        """`ServerOptions(**options)`, refusing unknown names with a TypeError that lists them
        (a mapping built at run time, e.g. from a configuration file, is not checked by mypy)."""
        unknown = set(options) - cls.names()
        if unknown:
            raise TypeError(f"unknown WebSocketManager option(s): {', '.join(sorted(unknown))}")
        return cls(**options)


class ServerOptionsDict(TypedDict, total=False):
    """The keyword form of `ServerOptions`: the same names and types, every key optional.

    For ``WebSocketManager(**options: Unpack[ServerOptionsDict])`` and for option mappings a
    caller builds and passes on (``options: ServerOptionsDict = {"port": 0}``). The meaning and
    default of each option are on `ServerOptions`; tests/core/test_options.py keeps the two equal.
    """

    host: str
    port: int
    max_connections: int | None
    heartbeat_interval: float | None
    heartbeat_timeout: float | None
    compression: bool
    compression_context_takeover: bool
    max_message_size: int
    outbox_size: int
    outbox_max_bytes: int
    slow_consumer_policy: SlowConsumerPolicy
    handshake_timeout: float
    close_timeout: float
    shutdown_timeout: float
    auto_create_rooms: bool
    server_id: str | None
    channel_prefix: str
    subprotocols: Sequence[str]
    # -- security (docs/security.md) --
    rate_limit: int | None
    rate_limit_period: float
    rate_limit_burst: int | None
    rate_limits: Mapping[str, int | None]
    rate_limit_max_refusals: int
    max_connections_per_ip: int | None
    max_connections_per_user: int | None
    max_rooms_per_connection: int | None
    max_subscriptions_per_connection: int | None
    allowed_origins: Sequence[str] | None
    allow_missing_origin: bool
    gc_freeze_interval: float | None
    serve_client_js: bool
    reuse_port: bool
    worker_id: int | None

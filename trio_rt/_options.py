"""Server options, validated once at construction so a bad value fails before anything listens."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

from ._outbox import SlowConsumerPolicy

__all__ = ["ServerOptions"]

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Every knob of `WebSocketManager`; see docs/server.md for what each does and why."""

    host: str = "127.0.0.1"
    port: int = 3001
    max_connections: int | None = 10_000
    heartbeat_interval: float | None = 30.0  # seconds between pings; None disables heartbeats
    heartbeat_timeout: float | None = None  # seconds to wait for the pong; default = interval
    compression: bool = True  # permessage-deflate
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
    subprotocols: tuple[str, ...] = ("trio_rt.v1",)
    serve_client_js: bool = True  # GET /trio_rt.js: the browser client (docs/browser.md)

    def __post_init__(self) -> None:
        errors: list[str] = []

        def positive_int(name: str, value: object, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                errors.append(f"{name} must be a positive integer, not {value!r}")

        def positive_float(name: str, value: object, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                errors.append(f"{name} must be a positive number of seconds, not {value!r}")

        if not isinstance(self.host, str) or not self.host:
            errors.append(f"host must be a non-empty string, not {self.host!r}")
        if (
            isinstance(self.port, bool)
            or not isinstance(self.port, int)
            or not (0 <= self.port <= 65535)
        ):
            errors.append(f"port must be an integer in 0..65535, not {self.port!r}")
        positive_int("max_connections", self.max_connections, allow_none=True)
        positive_float("heartbeat_interval", self.heartbeat_interval, allow_none=True)
        positive_float("heartbeat_timeout", self.heartbeat_timeout, allow_none=True)
        if not isinstance(self.compression, bool):
            errors.append(f"compression must be True or False, not {self.compression!r}")
        positive_int("max_message_size", self.max_message_size)
        positive_int("outbox_size", self.outbox_size)
        positive_int("outbox_max_bytes", self.outbox_max_bytes)
        try:
            object.__setattr__(
                self, "slow_consumer_policy", SlowConsumerPolicy(self.slow_consumer_policy)
            )
        except ValueError:
            choices = ", ".join(p.value for p in SlowConsumerPolicy)
            errors.append(
                f"slow_consumer_policy must be one of {choices}, not {self.slow_consumer_policy!r}"
            )
        positive_float("handshake_timeout", self.handshake_timeout)
        positive_float("close_timeout", self.close_timeout)
        positive_float("shutdown_timeout", self.shutdown_timeout)
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
        if not isinstance(self.serve_client_js, bool):
            errors.append(f"serve_client_js must be True or False, not {self.serve_client_js!r}")
        if errors:
            raise ValueError("invalid WebSocketManager options: " + "; ".join(errors))
        if self.heartbeat_interval is not None and self.heartbeat_timeout is None:
            object.__setattr__(self, "heartbeat_timeout", self.heartbeat_interval)

    @classmethod
    def names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))

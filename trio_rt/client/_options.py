"""`ClientOptions`: a `WebSocketClient`'s settings, checked once in its constructor so that a bad
value fails before anything connects; the client's parts read them from here.

Counts and durations use trio_rt/_core/checks.py (one rule and one wording with the server's
options); every problem is reported in one ``ValueError``. A URL that is not a string raises
``TypeError``, one websockets cannot parse its ``InvalidURI``, at once.
"""

from __future__ import annotations

import ssl as ssl_module
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from websockets.uri import parse_uri

from .._core.checks import int_problem, number_problem, require
from ._fatal import default_is_fatal
from ._types import (
    ConnectHook,
    HeadersLike,
    HeadersProvider,
    OverflowPolicy,
    ReceiveOverflowPolicy,
    TokenProvider,
)

__all__ = ["ClientOptions"]


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """The checked keywords of `WebSocketClient` (its docstring says what each one does);
    the backoff schedule and the random generator are kept apart (`Backoff`, ``rng``)."""

    urls: tuple[str, ...]
    url_index: int | None = None
    max_attempts: int | None = None
    queue_size: int = 1000
    overflow: OverflowPolicy = "raise"
    receive_buffer: int = 1000
    receive_overflow: ReceiveOverflowPolicy = "reconnect"
    headers: HeadersLike | HeadersProvider | None = None
    token: str | TokenProvider | None = None
    refresh_margin: float | None = 30.0
    on_connect: ConnectHook | None = None
    is_fatal: Callable[[BaseException], bool] = default_is_fatal
    compression: bool = True
    open_timeout: float | None = 10.0
    close_timeout: float = 10.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    max_size: int | None = 2**20
    ssl: ssl_module.SSLContext | None = None
    proxy: str | Literal[True] | None = True

    def __post_init__(self) -> None:
        urls = self.urls
        if not urls:
            raise ValueError("url must be a URL or a non-empty sequence of URLs")
        secure = []
        for one in urls:
            if not isinstance(one, str):
                raise TypeError(f"a URL must be a str, not {type(one).__name__}")
            secure.append(parse_uri(one).secure)  # InvalidURI now, not at the first attempt
        problems = [
            "ssl is only for wss:// URLs" if self.ssl is not None and not all(secure) else None,
            int_problem("max_attempts", self.max_attempts, allow_none=True),
            int_problem("queue_size", self.queue_size),
            int_problem("receive_buffer", self.receive_buffer),
            int_problem("max_size", self.max_size, allow_none=True),
            number_problem("ping_interval", self.ping_interval, allow_none=True),
            number_problem("ping_timeout", self.ping_timeout, allow_none=True),
            number_problem("open_timeout", self.open_timeout, allow_none=True),
            number_problem("close_timeout", self.close_timeout),
            number_problem("refresh_margin", self.refresh_margin, at_least=0, allow_none=True),
        ]
        index = self.url_index
        if index is not None and (
            not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(urls)
        ):
            problems.append(
                f"url_index must be None or an integer in [0, {len(urls)}), not {index!r}"
            )
        if self.overflow not in ("raise", "drop_oldest", "wait"):
            problems.append(
                f"overflow must be 'raise', 'drop_oldest' or 'wait', not {self.overflow!r}"
            )
        if self.receive_overflow not in ("reconnect", "drop_oldest", "wait"):
            problems.append(
                "receive_overflow must be 'reconnect', 'drop_oldest' or 'wait', "
                f"not {self.receive_overflow!r}"
            )
        if self.receive_overflow == "wait" and (
            self.ping_interval is None or self.ping_timeout is None
        ):
            # While waiting, the client does not read: only the heartbeat can tell it that
            # the server died meanwhile.
            problems.append("receive_overflow='wait' needs ping_interval and ping_timeout")
        token = self.token
        if token is not None and not callable(token) and (not isinstance(token, str) or not token):
            problems.append("token must be a non-empty string or a callable returning one")
        require(*problems)

    @property
    def refreshes_in_band(self) -> bool:
        """A token provider and a refresh margin: fresh tokens are sent in-band."""
        return callable(self.token) and self.refresh_margin is not None

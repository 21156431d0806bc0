"""Which errors stop the client and which ones it reconnects after, and how long a refused
handshake asks it to wait. Pure functions of an exception (they read websockets' and trio's
exception types; no I/O)."""

from __future__ import annotations

import math
from typing import Final

import trio
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

from ._errors import HeartbeatTimeout, ReceiveOverflow

__all__ = [
    "DEFAULT_FATAL_CLOSE_CODES",
    "DEFAULT_RETRYABLE_HTTP_STATUSES",
    "default_is_fatal",
    "retry_after",
]

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


def retry_after(error: BaseException | None) -> float | None:
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

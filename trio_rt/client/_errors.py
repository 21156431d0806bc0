"""The errors `WebSocketClient` raises: the `ClientError` branch of trio_rt's tree
(trio_rt/_core/errors.py draws it whole).

```text
ClientError (a trio_rt.TrioRTError)
├── ClientClosed        the client will not send, receive or reconnect any more
├── QueueFull           send() while offline with a full outbox (overflow="raise")
├── ServerError         the server answered a request with an "error" reply
├── ProtocolViolation   the server broke the protocol (first message not a welcome)
├── HeartbeatTimeout    the client dropped a connection: no pong within ping_timeout
└── ReceiveOverflow     the client dropped a connection: the app fell receive_buffer behind
```

No I/O here: websockets' exception types are read (a close frame, a refused handshake's
response), nothing else of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidStatus

from .._core.errors import TrioRTError
from ._types import Message

__all__ = [
    "ClientClosed",
    "ClientError",
    "HeartbeatTimeout",
    "ProtocolViolation",
    "QueueFull",
    "ReceiveOverflow",
    "ServerError",
]


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

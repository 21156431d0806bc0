"""CommandDispatch: every client message, from its frame to its handler, and every failure
turned into an ``error`` reply in one place.

`_protocol.parse` turns a frame into a command: a built-in (one class per type, the
`BUILTIN_COMMANDS` table) or the app's `ClientMessage`. This part then:

- counts it and applies the rate limits (`MessageAdmission`; an invalid frame counts against
  the default budget too);
- runs the handler: for a built-in, the one in `commands` (command class -> handler; the
  server's parts register theirs, extensions replace one through
  `WebSocketManager.add_command`); for the app's types, the handler registered with
  `on_message` (or the fallback), after its `room_field` check;
- answers a `ProtocolError` (a `RoomError` too) with its ``error`` reply, and any other
  exception with ``internal_error`` after the app's error handlers ran. The connection stays
  open either way.

Handlers of one connection run one at a time, in arrival order: the connection's reader
awaits `dispatch`.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .._core.protocol import (
    BUILTIN_COMMANDS,
    BUILTIN_TYPES,
    BuiltinCommand,
    ClientMessage,
    ErrorCode,
    Ping,
    PresenceQuery,
    PresenceStatsQuery,
    ProtocolError,
    RequestId,
    Subscribe,
    Unsubscribe,
    error_message,
    parse,
    reply,
    validate_room_name,
)
from .._core.rooms import RoomError
from .._core.stats import Instruments, ServerStats
from .admission import MessageAdmission
from .connection import Connection

__all__ = [
    "CommandDispatch",
    "CommandHandler",
    "ErrorHandler",
    "MessageHandler",
    "check_coroutine",
]

log = logging.getLogger("trio_rt")

MessageHandler = Callable[[Connection, dict[str, Any]], Awaitable[None]]
ErrorHandler = Callable[[Connection, Exception], Awaitable[None]]
C = TypeVar("C", bound=BuiltinCommand)
CommandHandler = Callable[[Connection, C], Awaitable[None]]
F = TypeVar("F", bound=Callable[..., Any])


def check_coroutine(fn: F) -> F:
    """`fn` itself, if calling it gives a coroutine (an async function or an object with an
    async ``__call__``); TypeError otherwise."""
    if not inspect.iscoroutinefunction(fn) and not inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - async callable objects are fine too
    ):
        raise TypeError(f"{fn!r} must be an async function (async def)")
    return fn


class CommandDispatch:
    """The dispatch table and the app's message handlers (see the module docstring).

    `may_broadcast(conn, room)` answers a `room_field` check (the rooms part's rule);
    `instruments` (set by the manager while a metrics object is attached) observes each app
    handler call.
    """

    def __init__(
        self,
        admission: MessageAdmission,
        stats: ServerStats,
        may_broadcast: Callable[[Connection, str], Awaitable[bool]],
    ) -> None:
        self._admission = admission
        self._stats = stats
        self._may_broadcast = may_broadcast
        self.commands: dict[type, Callable[[Connection, Any], Awaitable[None]]] = {
            Ping: self._ping,
            Subscribe: _subscriptions_disabled,
            Unsubscribe: _subscriptions_disabled,
            PresenceQuery: _presence_disabled,
            PresenceStatsQuery: _presence_disabled,
        }
        self.handlers: dict[str, MessageHandler] = {}  # the app's, by message type
        self.fallback: MessageHandler | None = None  # the app's, for types without a handler
        self.room_fields: dict[str, tuple[str, ...]] = {}  # type -> path of its target room
        self.error_handlers: list[ErrorHandler] = []
        self.instruments: Instruments | None = None

    # -- registration -----------------------------------------------------------------------
    def add_command(self, command: type[C], handler: CommandHandler[C]) -> None:
        """Handle the built-in `command` class with `handler` (replacing the one it had)."""
        if command not in BUILTIN_COMMANDS.values():
            raise ValueError(
                f"{command!r} is not a built-in command class "
                "(trio_rt._core.protocol.BUILTIN_COMMANDS)"
            )
        self.commands[command] = check_coroutine(handler)

    def on_message(
        self, type: str | None, room_field: str | None
    ) -> Callable[[MessageHandler], MessageHandler]:
        """`WebSocketManager.on_message`: checks the arguments now, registers the handler."""
        if type is not None and type in BUILTIN_TYPES:
            raise ValueError(f"{type!r} is a built-in message type")
        if room_field is not None:
            if type is None:
                raise ValueError("room_field needs a message type")
            path = tuple(room_field.split("."))
            if not all(path):
                raise ValueError(f"invalid room_field {room_field!r}")
            self.room_fields[type] = path

        def register(fn: MessageHandler) -> MessageHandler:
            check_coroutine(fn)
            if type is None:
                self.fallback = fn
            else:
                self.handlers[type] = fn
            return fn

        return register

    # -- dispatch ---------------------------------------------------------------------------
    async def dispatch(self, conn: Connection, frame: str | bytes) -> None:
        """Handle one frame of `conn` (the connection's reader awaits it). Never raises for
        what a client sent or a handler raised: those become ``error`` replies."""
        stats = self._stats
        stats.messages_in += 1
        request_id: RequestId = None
        try:
            command = parse(frame)
        except ProtocolError as exc:
            # Invalid frames count against the default budget too: garbage is not free.
            if await self._admission.admit(conn, None, exc.request_id):
                stats.protocol_errors += 1
                await conn.send(error_message(exc.code, exc.message, request_id=exc.request_id))
            return
        request_id = command.request_id
        mtype = command.type if isinstance(command, ClientMessage) else command.TYPE
        if not await self._admission.admit(conn, mtype, request_id):
            return
        try:
            if isinstance(command, ClientMessage):
                await self._app_message(conn, command)
            else:
                await self.commands[type(command)](conn, command)
        except ProtocolError as exc:  # RoomError too: the same family
            stats.protocol_errors += 1
            await conn.send(
                error_message(exc.code, exc.message, request_id=exc.request_id or request_id)
            )
        except Exception as exc:
            stats.handler_errors += 1
            log.exception("message handler failed for %r", conn)
            for on_error in self.error_handlers:
                try:
                    await on_error(conn, exc)
                except Exception:
                    log.exception("error handler failed")
            await conn.send(
                error_message(
                    ErrorCode.INTERNAL_ERROR,
                    "internal server error while handling the message",
                    request_id=request_id,
                )
            )

    async def _app_message(self, conn: Connection, command: ClientMessage) -> None:
        request_id = command.request_id
        handler = self.handlers.get(command.type, self.fallback)
        if handler is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_TYPE,
                f"unknown message type {command.type!r}",
                request_id=request_id,
            )
        path = self.room_fields.get(command.type)
        if path is not None:
            await self._check_room_field(conn, command.data, path, request_id)
        instruments = self.instruments
        if instruments is None:
            await handler(conn, command.data)
            return
        started = time.perf_counter()
        try:
            await handler(conn, command.data)
        finally:
            # Label by registered type: clients cannot invent label values.
            label = command.type if command.type in self.handlers else "*"
            instruments.handler_finished(label, time.perf_counter() - started)

    async def _check_room_field(
        self, conn: Connection, data: dict[str, Any], path: tuple[str, ...], request_id: RequestId
    ) -> None:
        """A client-initiated broadcast: the field must name a room the sender may
        ``broadcast`` to."""
        value: Any = data
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, str):
            raise ProtocolError(
                ErrorCode.INVALID_FIELD,
                f"'{'.'.join(path)}' must be a room name",
                request_id=request_id,
            )
        name = validate_room_name(value, request_id=request_id)
        if not await self._may_broadcast(conn, name):
            raise RoomError(ErrorCode.NOT_PERMITTED, f"cannot broadcast to room {name!r}")

    @staticmethod
    async def _ping(conn: Connection, command: Ping) -> None:
        await conn.send(reply("pong", command.request_id))


async def _subscriptions_disabled(conn: Connection, command: Subscribe | Unsubscribe) -> None:
    """The built-in handler of ``subscribe``/``unsubscribe`` until a ChangeStreamManager
    registers its own."""
    raise ProtocolError(
        ErrorCode.UNKNOWN_TYPE,
        "table subscriptions are not enabled on this server",
        request_id=command.request_id,
    )


async def _presence_disabled(conn: Connection, command: PresenceQuery | PresenceStatsQuery) -> None:
    """The built-in handler of ``presence``/``presence_stats`` until a PresenceService
    registers its own."""
    raise ProtocolError(
        ErrorCode.UNKNOWN_TYPE,
        "presence is not enabled on this server",
        request_id=command.request_id,
    )

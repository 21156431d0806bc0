"""`Supervisor`: the client's main task. It connects, runs each connection's session, waits
between attempts, reconnects, emits the events, and closes the client, until closed or given
up.

It owns the client's life (`ClientState`, closing, the close error) and the tasks of every
connection: a connection's nursery holds websockets' own tasks, the heartbeat and the session
(trio_rt/client/_session.py), and is cancelled when the connection ends, however it ends.
"""

from __future__ import annotations

import inspect
import logging
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

import trio
from websockets.frames import CloseCode
from websockets.trio.client import ClientConnection, connect

from ._backoff import Backoff
from ._errors import ClientClosed, HeartbeatTimeout, ReceiveOverflow
from ._fatal import retry_after
from ._options import ClientOptions
from ._session import Session, resolve_token
from ._state import ClientCore
from ._sync import Inbox, Signal
from ._types import (
    EVENT_TYPES,
    ClientEvent,
    ClientState,
    ClientStats,
    EventType,
    HeadersLike,
    Listener,
    Message,
)
from ._wire import token_exp

__all__ = ["Supervisor"]

log = logging.getLogger("trio_rt.client")


@dataclass(slots=True)
class _Outcome:
    """How one attempt (and, when it got that far, its connection) ended."""

    live: bool = False  # reached CONNECTED
    closed_by_user: bool = False
    error: BaseException | None = None
    close_code: int = int(CloseCode.ABNORMAL_CLOSURE)
    close_reason: str = ""


class Supervisor:
    """Connect, serve, reconnect; the client's state and events (see the module docstring).

    `WebSocketClient` builds it and runs `run` in its nursery; it asks it to close
    (`request_close`, graceful) or to stop at once (`abort`)."""

    def __init__(
        self,
        options: ClientOptions,
        backoff: Backoff,
        rng: random.Random,
        core: ClientCore,
        inbox: Inbox,
        changed: Signal,
        stats: ClientStats,
    ) -> None:
        self.options = options
        self.backoff = backoff
        self.max_attempts = options.max_attempts
        self.core = core
        self.inbox = inbox
        self.changed = changed  # any state, outbox or session change
        self.stats = stats
        self._rng = rng
        self.urls = options.urls
        index = options.url_index
        if index is None:
            index = rng.randrange(len(self.urls)) if len(self.urls) > 1 else 0
        self._url_index = index
        self.welcome: Message | None = None

        self._state = ClientState.CONNECTING
        self._listeners: dict[str, list[Listener]] = {name: [] for name in EVENT_TYPES}
        self._listener_error: Exception | None = None
        self._run_scope = trio.CancelScope()
        self._attempt_scope: trio.CancelScope | None = None
        self._live: Session | None = None  # the current connection once CONNECTED
        self._closing = False
        self._close_error: BaseException | None = None
        self._close_message = "the client is closed"
        self._done = trio.Event()
        self._task: trio.lowlevel.Task | None = None

    # -- what the client reads ----------------------------------------------------------------
    @property
    def url(self) -> str:
        """The URL of the current (or next) connection attempt."""
        return self.urls[self._url_index]

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def closing(self) -> bool:
        """True once the client is closing or closed (aclose, an error, giving up)."""
        return self._closing

    @property
    def close_error(self) -> BaseException | None:
        """What closed the client (None after a normal close, or while open)."""
        return self._close_error

    def closed_exception(self) -> ClientClosed:
        return ClientClosed(self._close_message, error=self._close_error)

    # -- closing --------------------------------------------------------------------------------
    def request_close(self) -> None:
        """A graceful close: the live connection flushes and closes with 1000; an attempt or a
        wait between attempts is cancelled. Idempotent."""
        if self._closing:
            return
        self._closing = True
        session = self._live
        if session is not None:
            session.close_requested = True
        elif self._attempt_scope is not None:
            self._attempt_scope.cancel()
        self.changed.fire()

    def abort(self) -> None:
        """Stop at once: cancel every task of the client."""
        self._closing = True
        self._run_scope.cancel()

    def in_own_task(self) -> bool:
        """True when called from the supervisor's task (e.g. by an event listener)."""
        return trio.lowlevel.current_task() is self._task

    async def wait_closed(self) -> None:
        await self._done.wait()

    # -- events ---------------------------------------------------------------------------------
    def add_listener(self, event: EventType, fn: Listener) -> None:
        if event not in EVENT_TYPES:
            raise ValueError(f"unknown event {event!r}; expected one of {sorted(EVENT_TYPES)}")
        self._listeners[event].append(fn)

    def remove_listener(self, event: EventType, fn: Listener) -> None:
        self._listeners[event].remove(fn)

    async def emit(self, event: ClientEvent) -> None:
        """Call the event's listeners in order, awaiting each. One that raises stops the client
        (its exception leaves `run`); this then raises Cancelled."""
        for fn in list(self._listeners[event.type]):
            try:
                result = fn(event)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                if self._listener_error is None:
                    self._listener_error = exc
                self.abort()
                await trio.lowlevel.checkpoint()  # raises Cancelled: unwinds the supervisor
                raise AssertionError("unreachable: the run scope is cancelled") from exc

    # -- the main task --------------------------------------------------------------------------
    async def run(self) -> None:
        """The client's main task: connect, serve, reconnect, until closed or given up."""
        self._task = trio.lowlevel.current_task()
        ending: ClientClosed | None = None
        try:
            with self._run_scope:
                ending = await self._connection_loop()
                self._finish(ending)
                await self.emit(ClientEvent("closed", error=ending.error if ending else None))
        finally:
            self._finish(ending)
            self._done.set()
        if self._listener_error is not None:
            raise self._listener_error

    def _set_state(self, state: ClientState) -> None:
        if self._state is not ClientState.CLOSED:
            self._state = state
        self.changed.fire()

    def _finish(self, ending: ClientClosed | None) -> None:
        """Enter CLOSED (idempotent): fail what waits, discard what is queued."""
        if self._state is ClientState.CLOSED:
            return
        self._closing = True
        if ending is not None:
            self._close_error = ending.error
            self._close_message = str(ending)
        self._state = ClientState.CLOSED
        self.inbox.close()
        self.core.close(self.closed_exception)

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
                if self.inbox.buffer.policy == "reconnect":
                    # A new connection would overflow the receive buffer again at once.
                    await self.inbox.wait_for_app(lambda: self._closing)
                if self._closing:
                    return None
                self._next_url()
                delay = self.backoff.delay(retry, self._rng)
                retry += 1
                hint = retry_after(last_error)
                if hint is not None:
                    delay = min(self.backoff.max_delay, max(delay, hint))
                log.info("reconnecting to %s in %.2fs (attempt %d)", self.url, delay, failures + 1)
                await self.emit(
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
                and self.options.is_fatal(outcome.error)
            ):
                stop = True
                ending = ClientClosed(f"fatal error: {outcome.error!r}", error=outcome.error)
            if outcome.live:
                if stop:
                    self._finish(ending)
                else:
                    self._set_state(ClientState.RECONNECTING)
                await self.emit(
                    ClientEvent(
                        "disconnected",
                        close_code=outcome.close_code,
                        close_reason=outcome.close_reason,
                        error=None if outcome.closed_by_user else outcome.error,
                    )
                )
            if stop:
                return ending

    def _next_url(self) -> None:
        """Move to the next URL (round-robin) for the coming attempt."""
        if len(self.urls) > 1:
            self._url_index = (self._url_index + 1) % len(self.urls)

    # -- one attempt ----------------------------------------------------------------------------
    async def _attempt(self, number: int) -> _Outcome:
        """One connection attempt and, if it succeeds, the whole life of that connection."""
        outcome = _Outcome()
        open_timeout = self.options.open_timeout
        deadline = math.inf if open_timeout is None else trio.current_time() + open_timeout
        session: Session | None = None
        with trio.CancelScope(deadline=deadline) as scope:
            self._attempt_scope = scope
            try:
                headers = await self._resolve_headers()
                token = await resolve_token(self.options.token)
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
                        book = self.core.open_connection(token_exp(token))
                        session = Session(self, ws, transport.cancel_scope, book)
                        if self.options.ping_interval is not None:
                            transport.start_soon(session.heartbeat)
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
                    f"no welcome and room confirmations within open_timeout={open_timeout}s"
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

    def _connect(self, headers: HeadersLike | None) -> connect:
        options = self.options
        return connect(
            self.url,
            additional_headers=headers,
            compression="deflate" if options.compression else None,
            open_timeout=None,  # the attempt's cancel scope bounds handshake + welcome + rejoins
            ping_interval=None,  # the client's own heartbeat (Session.heartbeat) checks liveness
            close_timeout=options.close_timeout,
            max_size=options.max_size,
            ssl=options.ssl,
            proxy=options.proxy,
        )

    async def _resolve_headers(self) -> HeadersLike | None:
        headers = self.options.headers
        if headers is None or not callable(headers):
            return headers
        result = headers()
        if inspect.isawaitable(result):
            return await result
        return result

    async def _run_session(
        self, session: Session, scope: trio.CancelScope, outcome: _Outcome, number: int
    ) -> None:
        welcome = await session.receive_welcome()
        failure: BaseException | None = None
        close_timeout = self.options.close_timeout
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.read_loop)
            try:
                await session.restore(welcome, number)
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
                for room, error in session.book.failed_rooms:
                    await self.emit(ClientEvent("rejoin_failed", room=room, error=error))
                await self.emit(ClientEvent("connected", attempt=number, welcome=welcome))
                nursery.start_soon(session.write_loop)
                if self.options.refreshes_in_band:
                    nursery.start_soon(session.refresh_loop)
                while not session.ended and not session.close_requested:
                    await self.changed.wait()
                if session.close_requested and not session.ended:
                    with trio.move_on_after(close_timeout):
                        while (self.core.outbox or session.writing) and not session.ended:
                            await self.changed.wait()
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if self._closing:
            outcome.closed_by_user = True
            if not session.ended:
                # websockets bounds the wait for the server's close frame, not the write of
                # ours (a full socket buffer): bound both; the attempt then drops the TCP
                # connection whatever happened.
                with trio.move_on_after(close_timeout):
                    await session.close_gracefully()

    def _end_session(self, session: Session) -> None:
        """The connection is over: what was tied to it is settled."""
        if self._live is session:
            self._live = None
        self.core.connection_ended(session.book)

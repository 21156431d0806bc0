"""Trio-native Redis connections: one socket each, RESP2 parsed by ``hiredis.Reader``.

Two kinds:

- `RedisConnection` carries commands. Callers append their commands; the first caller of a
  scheduler pass that finds no write in progress becomes the writer: it yields once (so the
  other tasks of that pass add theirs), then writes everything pending in one ``send_all``.
  Replies come back in order and are matched to the waiting callers in order. Whoever waits
  first reads the socket for everyone (and hands that role on when its own reply came), so the
  connection needs no task of its own: a component without a nursery (`RedisRateLimiter`)
  can use it, and a waiting caller is woken by the task that parsed its reply, never by a loop
  on another event loop. At most `max_pending` commands wait for replies; further callers wait
  for room (policy: backpressure on the callers, never an unbounded buffer).
- `PubSubConnection` carries (S)SUBSCRIBE/(S)UNSUBSCRIBE/PING after the handshake, and its
  owner's reader task takes every reply as it comes (`receive`, one batch per socket read):
  messages, confirmations, pongs, error replies. Writes are buffered (`send_nowait`) and
  written by `flush`, the same way as commands.

A connection that fails is broken for good (its socket closed); its owner opens another.
Errors (trio_rt/redis/_resp.py): `RedisUnavailable` when the socket fails or closes, with
`maybe_sent` telling whether a command may have reached Redis; `RedisTimeout` when no reply
(or no write) makes progress within `io_timeout`; `RedisReplyError` for an error reply, which
leaves the connection usable. A caller cancelled while it waits abandons its command (it may
still run on Redis; its reply is read and dropped). A write is shielded from cancellation
(bounded by `io_timeout`): half a command on the socket would corrupt the stream for everyone.

Before writing on a connection with no reply outstanding, `RedisConnection` polls its socket
(one non-blocking ``poll``): a plain socket is only readable then if Redis closed it (a
restart), so the commands go to a fresh connection instead of a dead one, with
``maybe_sent=False``. TLS connections skip the check (TLS may send records of its own).
"""

from __future__ import annotations

import select
import ssl
from collections import deque
from typing import Any

import hiredis
import trio

from ._resp import RedisAddress, RedisReplyError, RedisTimeout, RedisUnavailable, pack

__all__ = ["PubSubConnection", "RedisConnection", "open_stream"]

BUFFER = 65536  # bytes read per receive_some

_IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


async def open_stream(address: RedisAddress, io_timeout: float) -> trio.abc.Stream:
    """A connected socket to `address` (TLS handshake done), within `io_timeout` seconds.

    Raises `RedisTimeout` or `RedisUnavailable` (``maybe_sent=False``)."""
    stream: trio.abc.Stream
    with trio.move_on_after(io_timeout) as scope:
        try:
            if address.path is not None:
                stream = await trio.open_unix_socket(address.path)
            else:
                stream = await trio.open_tcp_stream(address.host, address.port)
            if address.tls:
                context = ssl.create_default_context(cafile=address.tls_ca_file)
                if not address.tls_verify:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                tls = trio.SSLStream(stream, context, server_hostname=address.host)
                try:
                    await tls.do_handshake()
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
                stream = tls
        except (OSError, trio.BrokenResourceError) as exc:
            raise RedisUnavailable(f"cannot connect to redis at {address}: {exc!r}") from exc
    if scope.cancelled_caught:
        raise RedisTimeout(f"cannot connect to redis at {address} within {io_timeout:g}s")
    return stream


def _socket(stream: trio.abc.Stream) -> trio.socket.SocketType:
    transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if not isinstance(transport, trio.SocketStream):
        raise TypeError(f"not a socket stream: {stream!r}")
    return transport.socket


async def _handshake(
    stream: trio.abc.Stream, parser: hiredis.Reader, address: RedisAddress, io_timeout: float
) -> None:
    """AUTH/SELECT as `address` says, before the connection is handed out. An error reply
    (wrong password, no such database) is raised as `RedisReplyError`."""
    commands = address.handshake()
    if not commands:
        return
    with trio.move_on_after(io_timeout) as scope:
        try:
            await stream.send_all(b"".join(pack(c) for c in commands))
            replies: list[Any] = []
            while len(replies) < len(commands):
                data = await stream.receive_some(BUFFER)
                if not data:
                    raise RedisUnavailable(f"redis at {address} closed the connection")
                parser.feed(data)  # type: ignore[arg-type]  # any buffer (stub: bytes)
                while (reply := parser.gets()) is not False:
                    replies.append(reply)
        except (*_IO_ERRORS, hiredis.ProtocolError) as exc:
            raise RedisUnavailable(f"connection to redis at {address} failed: {exc!r}") from exc
    if scope.cancelled_caught:
        raise RedisTimeout(f"redis at {address} did not answer the handshake in {io_timeout:g}s")
    for reply in replies:
        if isinstance(reply, RedisReplyError):
            raise reply


class _Socket:
    """A socket to one Redis server, its reply parser and its buffered writes."""

    def __init__(self, stream: trio.abc.Stream, address: RedisAddress, io_timeout: float) -> None:
        self.address = address
        self._stream = stream
        self._sock = _socket(stream)
        self._timeout = io_timeout
        self._parser = hiredis.Reader(replyError=RedisReplyError)
        self._out: list[bytes] = []
        self._writing = False
        self._error: RedisUnavailable | None = None

    @property
    def broken(self) -> bool:
        """Failed or closed: it carries nothing more."""
        return self._error is not None

    def _failure(self, maybe_sent: bool) -> RedisUnavailable:
        """What a caller gets from a broken connection: its error's kind and text, with
        whether this caller's command may have been sent."""
        error = self._error
        assert error is not None
        return type(error)(str(error), maybe_sent=maybe_sent)

    def _break(self, error: RedisUnavailable) -> None:
        if self._error is None:
            self._error = error
            # Sync close: a task blocked reading it gets ClosedResourceError at once.
            self._sock.close()

    def close(self) -> None:
        """Close the socket; what waits on it fails with `RedisUnavailable`."""
        self._break(RedisUnavailable(f"the connection to redis at {self.address} was closed"))

    def _ready_to_write(self) -> bool:
        """Called before each write, synchronously; False aborts it (the socket is broken)."""
        return True

    async def flush(self) -> None:
        """Write what is buffered, unless another task is writing already (it takes ours).

        Never raises for the socket: a failed write breaks the connection, and its waiters
        are told."""
        if self._writing:
            await trio.lowlevel.checkpoint()
            return
        self._writing = True
        try:
            # Let the other tasks of this scheduler pass add their commands: one write.
            await trio.lowlevel.cancel_shielded_checkpoint()
            while self._out and self._error is None and self._ready_to_write():
                data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
                self._out.clear()
                # Shielded: half a command on the socket would corrupt the stream.
                with trio.CancelScope(shield=True), trio.move_on_after(self._timeout) as scope:
                    await self._stream.send_all(data)
                if scope.cancelled_caught:
                    self._break(
                        RedisTimeout(
                            f"redis at {self.address} took no data for {self._timeout:g}s",
                            maybe_sent=True,
                        )
                    )
        except _IO_ERRORS as exc:
            self._break(
                RedisUnavailable(
                    f"write to redis at {self.address} failed: {exc!r}", maybe_sent=True
                )
            )
        finally:
            self._writing = False


class _Reply:
    """One command's place in the reply order."""

    __slots__ = ("done", "sent", "task", "value")

    def __init__(self) -> None:
        self.done = False
        self.sent = False
        self.task: trio.lowlevel.Task | None = None  # parked, waiting for a wake-up
        self.value: Any = None


class RedisConnection(_Socket):
    """Pipelined commands over one socket, driven by its callers (see the module docstring).

    Open it with `connect`. `execute` and `execute_many` may be called from any number of
    tasks at once; `close` fails whatever waits.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        address: RedisAddress,
        *,
        io_timeout: float = 5.0,
        max_pending: int = 10_000,
    ) -> None:
        super().__init__(stream, address, io_timeout)
        self._max_pending = max_pending
        self._queued: list[_Reply] = []  # commands in _out, not written yet
        self._waiting: deque[_Reply] = deque()  # written, in order, awaiting their replies
        self._reading = False
        self._handed: _Reply | None = None  # woken to read next, not reading yet
        self._room = trio.lowlevel.ParkingLot()  # callers waiting for room under max_pending
        self._poll: select.poll | None = None
        if not isinstance(stream, trio.SSLStream):
            self._poll = select.poll()
            self._poll.register(self._sock.fileno(), select.POLLIN)

    @classmethod
    async def connect(
        cls, address: RedisAddress, *, io_timeout: float = 5.0, max_pending: int = 10_000
    ) -> RedisConnection:
        """Open a connection and log in (AUTH/SELECT from `address`), each within
        `io_timeout`.

        Raises `RedisUnavailable`/`RedisTimeout` (``maybe_sent=False``), or the
        `RedisReplyError` of a refused login."""
        stream = await open_stream(address, io_timeout)
        connection = cls(stream, address, io_timeout=io_timeout, max_pending=max_pending)
        try:
            await _handshake(stream, connection._parser, address, io_timeout)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return connection

    @property
    def pending(self) -> int:
        """Commands sent or queued that have no reply yet (abandoned ones included)."""
        return len(self._queued) + len(self._waiting)

    async def execute(self, *args: Any) -> Any:
        """Run one command; return its reply or raise its error (see the module docstring)."""
        while self.pending >= self._max_pending and self._error is None:
            await self._room.park()
        reply = self._enqueue(args)
        await self.flush()
        value = await self._result(reply)
        if isinstance(value, RedisReplyError):
            raise value
        return value

    async def execute_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Run `commands` back to back in one write (nothing of another caller's between
        them); return their replies in order, error replies as `RedisReplyError` values."""
        while (
            self.pending
            and self.pending + len(commands) > self._max_pending
            and self._error is None
        ):
            await self._room.park()
        replies = [self._enqueue(args) for args in commands]
        await self.flush()
        return [await self._result(reply) for reply in replies]

    def _enqueue(self, args: tuple[Any, ...]) -> _Reply:
        if self._error is not None:
            raise self._failure(maybe_sent=False)
        reply = _Reply()
        self._out.append(pack(args))
        self._queued.append(reply)
        return reply

    def _ready_to_write(self) -> bool:
        if not self._waiting and self._poll is not None and self._poll.poll(0):
            # Nothing is awaited, yet the socket is readable: Redis closed it (restarted).
            self._break(RedisUnavailable(f"redis at {self.address} closed the connection"))
            return False
        for reply in self._queued:
            reply.sent = True
        self._waiting.extend(self._queued)
        self._queued.clear()
        return True

    async def _result(self, reply: _Reply) -> Any:
        try:
            while not reply.done:
                if self._error is not None:
                    raise self._failure(maybe_sent=reply.sent)
                if not self._reading and reply.sent:
                    self._handed = None
                    await self._read_until(reply)
                else:
                    reply.task = trio.lowlevel.current_task()

                    def abort(_: Any, reply: _Reply = reply) -> trio.lowlevel.Abort:
                        reply.task = None  # abandoned: its reply is read and dropped
                        return trio.lowlevel.Abort.SUCCEEDED

                    await trio.lowlevel.wait_task_rescheduled(abort)
        finally:
            if self._handed is reply:
                self._handed = None
            # Someone must read for the callers still parked (ours came without reading).
            self._hand_reading_on()
        return reply.value

    async def _read_until(self, reply: _Reply) -> None:
        """Read for every waiter until `reply` is answered; then hand reading on."""
        self._reading = True
        try:
            while not reply.done and self._error is None:
                with trio.move_on_after(self._timeout) as scope:
                    data = await self._stream.receive_some(BUFFER)
                if scope.cancelled_caught:
                    self._break(
                        RedisTimeout(
                            f"redis at {self.address} did not answer within {self._timeout:g}s",
                            maybe_sent=True,
                        )
                    )
                elif not data:
                    self._break(
                        RedisUnavailable(
                            f"redis at {self.address} closed the connection", maybe_sent=True
                        )
                    )
                else:
                    self._parser.feed(data)  # type: ignore[arg-type]  # any buffer (stub: bytes)
                    self._dispatch()
        except (*_IO_ERRORS, hiredis.ProtocolError) as exc:
            self._break(
                RedisUnavailable(
                    f"connection to redis at {self.address} failed: {exc!r}", maybe_sent=True
                )
            )
        finally:
            self._reading = False
            if self._error is not None:
                self._wake_all()
            else:
                self._hand_reading_on()

    def _dispatch(self) -> None:
        parser, waiting = self._parser, self._waiting
        while (value := parser.gets()) is not False:
            if not waiting:
                self._break(RedisUnavailable(f"redis at {self.address} sent an unasked reply"))
                return
            reply = waiting.popleft()
            reply.value = value
            reply.done = True
            task = reply.task
            if task is not None:
                reply.task = None
                trio.lowlevel.reschedule(task)
        if self._room.statistics().tasks_waiting:
            self._room.unpark(count=max(0, self._max_pending - self.pending))

    def _hand_reading_on(self) -> None:
        """Unless someone reads (or was woken to), wake the first parked caller whose
        command was written: it reads next."""
        if self._reading or self._handed is not None:
            return
        for reply in self._waiting:
            if reply.task is not None:
                task, reply.task = reply.task, None
                self._handed = reply
                trio.lowlevel.reschedule(task)
                return

    def _wake_all(self) -> None:
        for reply in (*self._waiting, *self._queued):
            if reply.task is not None:
                task, reply.task = reply.task, None
                trio.lowlevel.reschedule(task)
        self._room.unpark_all()

    def _break(self, error: RedisUnavailable) -> None:
        super()._break(error)
        self._wake_all()


class PubSubConnection(_Socket):
    """A subscriber's socket: its owner reads every reply (`receive`) and writes commands
    with `send_nowait` + `flush` (see the module docstring)."""

    @classmethod
    async def connect(cls, address: RedisAddress, *, io_timeout: float = 5.0) -> PubSubConnection:
        """Open and log in, like `RedisConnection.connect`."""
        stream = await open_stream(address, io_timeout)
        connection = cls(stream, address, io_timeout)
        try:
            await _handshake(stream, connection._parser, address, io_timeout)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return connection

    def send_nowait(self, *args: Any) -> None:
        """Buffer a command; `flush` writes it. Ignored once the connection is broken."""
        if self._error is None:
            self._out.append(pack(args))

    async def receive(self) -> list[Any]:
        """The replies of one socket read, in order (error replies as `RedisReplyError`
        values). Raises `RedisUnavailable` when the connection fails or Redis closes it."""
        if self._error is not None:
            raise self._failure(maybe_sent=False)
        try:
            data = await self._stream.receive_some(BUFFER)
        except _IO_ERRORS as exc:
            self._break(RedisUnavailable(f"read from redis at {self.address} failed: {exc!r}"))
            raise self._failure(maybe_sent=False) from exc
        if not data:
            self._break(RedisUnavailable(f"redis at {self.address} closed the connection"))
            raise self._failure(maybe_sent=False)
        parser = self._parser
        parser.feed(data)  # type: ignore[arg-type]  # any buffer (stub: bytes)
        replies = []
        try:
            while (reply := parser.gets()) is not False:
                replies.append(reply)
        except hiredis.ProtocolError as exc:
            self._break(RedisUnavailable(f"redis at {self.address} broke the protocol: {exc}"))
            raise self._failure(maybe_sent=False) from exc
        return replies

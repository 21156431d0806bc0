"""A socket stream that can also be written synchronously, without a task switch.

Fan-out cost is dominated by awaits and system calls per delivery (docs/performance.md). When
a connection is idle — nothing queued, no write in progress — a send does not wake a writer
task: in a quiet server it is written at once with one non-blocking send; during a burst it
is *corked* here, and the engine's `FlushQueue` task (`_engine/flush.py`) writes everything
a connection corked over a few scheduler passes with one send. A burst thus costs one system
call per connection per flush instead of one per message, and an isolated message no extra
latency. What the kernel does not take is kept here and written before anything else, by
whichever task writes next (our writer, or websockets sending a pong or a close frame), so
frames never interleave.
"""

from __future__ import annotations

import errno
import os
import socket

import trio

from .._engine.sockets import BROKEN, BUSY, CORKED, CORKED_FULL, PARTIAL, WROTE

__all__ = ["CORK_MAX_BYTES", "DirectStream"]

DEFAULT_RECEIVE_SIZE = 65536  # as trio.SocketStream
_CLOSED_ERRNOS = {errno.EBADF, errno.ENOTSOCK}  # as trio: the socket was closed under us
# A connection's corked bytes are written at once past this size: memory stays bounded, and
# a client that does not read ends up with a full socket and the outbox's bounds.
CORK_MAX_BYTES = 64 * 1024


class DirectStream(trio.abc.HalfCloseableStream):
    """Wraps a `trio.SocketStream`; every write of websockets and trio_rt goes through it.

    Reads are trio's `SocketStream.receive_some` made lean: an idle connection spends its life
    parked in this call, and trio's own chain (the stream, the socket wrapper, its
    non-blocking helper and context managers) keeps ~2 KiB and a dozen GC-tracked objects
    alive per connection, rebuilt after every packet (docs/performance.md). Same contract:
    a checkpoint; b"" at end of stream; ClosedResourceError once closed (also while waiting);
    BrokenResourceError for any other socket error.
    """

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner
        self.socket = inner.socket  # websockets reads addresses from stream.socket
        # The stdlib socket inside trio's (its fileno() is -1 once closed): asking it for the
        # descriptor skips trio's Python wrapper, once per frame on the fan-out's hot path.
        raw = getattr(inner.socket, "_sock", None)
        if not isinstance(raw, socket.socket):  # trio's socket type keeps it there
            raise TypeError("DirectStream needs a trio socket over a standard socket")
        self._raw = raw
        self._pending = b""  # the tail of a frame the kernel did not take yet
        # Whole frames for the next flush, in order. A bytearray, not a list: it is not tracked
        # by the cyclic GC, and a list per connection per flush made collections frequent.
        self._corked: bytearray | None = None
        self._sending = False
        # The connection's send lock is held (websockets' writes, the writer): the transport's
        # lock sets it, so the fan-out's `send_frame` sees it without asking the lock.
        self.lock_held = False

    @property
    def pending(self) -> int:
        """Bytes the kernel did not take yet: whoever writes next sends them first."""
        return len(self._pending)

    @property
    def corking(self) -> bool:
        """Frames are corked, waiting for the next `flush` (or write)."""
        return self._corked is not None

    @property
    def idle(self) -> bool:
        """No write is in progress, nobody holds the connection's send lock (`lock_held`) and
        no partly written frame waits: `send_now` and `cork` may be called. (Corked frames do
        not count: every write sends them first.)"""
        return not self._sending and not self._pending and not self.lock_held

    def cork(self, data: bytes) -> bool:
        """Keep `data` for the next `flush` (or the next write, whichever comes first). The
        first frame only when `idle` (see `corking`: the caller then makes sure a flush
        happens). Returns True once the corked frames reach `CORK_MAX_BYTES`: the caller
        flushes them now, so memory stays bounded (beyond, the outbox's bounds apply)."""
        corked = self._corked
        if corked is None:
            corked = self._corked = bytearray(data)
        else:
            corked += data
        return len(corked) >= CORK_MAX_BYTES

    def cork_more(self, data: bytes) -> int:
        """`cork` of a burst's next frame, when frames are corked already: CORKED, or
        CORKED_FULL once they reach `CORK_MAX_BYTES` (the caller flushes them now). BUSY if
        nothing is corked: nothing done (the caller checks `idle` and corks the first).
        Attribute reads only: it runs once per recipient of every fan-out of a burst."""
        corked = self._corked
        if corked is None:
            return BUSY
        corked += data
        return CORKED if len(corked) < CORK_MAX_BYTES else CORKED_FULL

    def flush(self) -> bool:
        """Write the corked frames (`send_now`), unless a write in progress has taken them.
        Returns False if the socket is closed or broken."""
        if self._corked is None:
            return True
        if not self.idle:  # whoever writes next sends them first
            self.uncork_to_pending()
            return True
        return self.send_now(b"")

    def uncork_to_pending(self) -> None:
        """Make the corked frames pending: the next write (any task's) sends them first.
        For when the connection stops being written directly (a message had to be queued)."""
        corked = self._corked
        if corked is not None:
            self._corked = None
            self._pending += corked

    def send_now(self, data: bytes) -> bool:
        """Write `data` with one non-blocking send; keep what the kernel does not take as
        pending. Only when `idle`. Corked frames go first. False (and `data` dropped) when the
        socket is closed or broken: the reader sees the broken connection and ends it."""
        corked = self._corked
        if corked is not None:
            self._corked = None
            corked += data
            data = corked  # type: ignore[assignment]  # os.write takes either
        # Ask for the descriptor every time: once the socket is closed its number can belong
        # to another connection, and writing there would hand one client another's data.
        fd = self._raw.fileno()
        if fd < 0:
            return False
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return False
        if sent < len(data):
            self._pending = bytes(data[sent:])
        return True

    def send_frame(self, data: bytes) -> int:
        """`send_now` for a fan-out's quiet case, checks included: when `idle` and nothing is
        corked, one non-blocking send of `data` (WROTE, or PARTIAL: the rest is pending);
        otherwise BUSY and nothing is done (the caller queues `data`); BROKEN if the socket is
        closed or broken. One call, attribute reads only: it runs once per recipient."""
        if self._sending or self._pending or self.lock_held or self._corked is not None:
            return BUSY
        try:
            # send(), not os.write(): the kernel's socket path without the VFS layer's (about
            # 0.3 µs a frame less, measured). The stdlib socket knows once it is closed (its
            # descriptor is then -1: EBADF), so no other connection's descriptor is written.
            sent = self._raw.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return BROKEN
        if sent == len(data):
            return WROTE
        self._pending = bytes(data[sent:])
        return PARTIAL

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._sending = True
        try:
            self.uncork_to_pending()
            if self._pending:
                head, self._pending = self._pending, b""
                await self.inner.send_all(head + bytes(data))
            elif data:
                await self.inner.send_all(data)
            else:
                await trio.lowlevel.checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_SIZE
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            fd = self._raw.fileno()  # every time: see send_now
            if fd < 0:
                raise trio.ClosedResourceError("this socket was already closed")
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:
                data = None  # wait outside the except block: the exception is not kept alive
            except OSError as exc:
                if exc.errno in _CLOSED_ERRNOS:
                    raise trio.ClosedResourceError("this socket was already closed") from None
                raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
            if data is not None:
                if not waited:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return data
            await trio.lowlevel.wait_readable(fd)  # ClosedResourceError if closed meanwhile
            waited = True

    async def aclose(self) -> None:
        self._pending = b""
        self._corked = None
        await self.inner.aclose()

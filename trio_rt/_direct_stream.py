"""A socket stream that can also be written synchronously, without a task switch.

Fan-out cost is dominated by awaits per delivery (docs/performance.md). When a connection is
idle — nothing queued, no write in progress — a broadcast can hand the frame straight to the
kernel with one non-blocking send. What the kernel does not take is kept here and written before
anything else, by whichever task writes next (our writer, or websockets sending a pong or a
close frame), so frames never interleave.
"""

from __future__ import annotations

import errno
import os

import trio

__all__ = ["DirectStream"]

DEFAULT_RECEIVE_SIZE = 65536  # as trio.SocketStream
_CLOSED_ERRNOS = {errno.EBADF, errno.ENOTSOCK}  # as trio: the socket was closed under us


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
        self._pending = b""  # the tail of a frame the kernel did not take yet
        self._sending = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def idle(self) -> bool:
        """Nothing is being written and nothing waits to be: `send_now` may be called."""
        return not self._sending and not self._pending

    def try_send(self, data: bytes) -> bool:
        """Write `data` now if nothing else is being or waiting to be written.

        Returns True when `data` is written or kept as pending (the caller must then make sure
        a writer flushes it); False when the caller must queue it instead.
        """
        if self._sending or self._pending:
            return False
        return self.send_now(data)

    def send_now(self, data: bytes) -> bool:
        """Write `data` with one non-blocking send; keep what the kernel does not take as
        pending. Only when `idle`. False (and `data` dropped) when the socket is closed or
        broken: the reader sees the broken connection and ends it."""
        # Ask for the descriptor every time: once the socket is closed its number can belong
        # to another connection, and writing there would hand one client another's data.
        fd = self.socket.fileno()
        if fd < 0:
            return False
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return False
        if sent < len(data):
            self._pending = data[sent:]
        return True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._sending = True
        try:
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
            fd = self.socket.fileno()  # every time: see send_now
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
        await self.inner.aclose()

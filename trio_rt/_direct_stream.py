"""A socket stream that can also be written synchronously, without a task switch.

Fan-out cost is dominated by awaits per delivery (docs/performance.md). When a connection is
idle — nothing queued, no write in progress — a broadcast can hand the frame straight to the
kernel with one non-blocking send. What the kernel does not take is kept here and written before
anything else, by whichever task writes next (our writer, or websockets sending a pong or a
close frame), so frames never interleave.
"""

from __future__ import annotations

import os

import trio

__all__ = ["DirectStream"]


class DirectStream(trio.abc.HalfCloseableStream):
    """Wraps a `trio.SocketStream`; every write of websockets and trio_rt goes through it."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner
        self.socket = inner.socket  # websockets reads addresses from stream.socket
        self._pending = bytearray()  # the tail of a frame the kernel did not take yet
        self._sending = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    def try_send(self, data: bytes) -> bool:
        """Write `data` now if nothing else is being or waiting to be written.

        Returns True when `data` is written or kept as pending (the caller must then make sure
        a writer flushes it); False when the caller must queue it instead.
        """
        if self._sending or self._pending:
            return False
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
            return False  # a broken socket: the queued path reports it properly
        if sent < len(data):
            self._pending += data[sent:]
        return True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._sending = True
        try:
            if self._pending:
                head = bytes(self._pending)
                self._pending.clear()
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
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        self._pending.clear()
        await self.inner.aclose()

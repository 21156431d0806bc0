"""One asyncio loop (trio-asyncio) for a component that says it needs one (``needs_asyncio``).

No trio_rt component needs it any more: the Redis components are Trio-native (``_client.py``,
``_connection.py``), and the ``redis`` extra no longer brings trio-asyncio. The manager and
`ChangeStreamManager` still open a loop here for a component (a broker, a rate limiter, a
sequencer of the application's own) whose ``needs_asyncio`` attribute is true; such a
component brings trio-asyncio itself. Crossing the bridge costs ~91 us per `aio_as_trio` call,
and trio-asyncio runs one asyncio callback per Trio scheduling pass, so asyncio code slows down
whenever Trio is busy (docs/performance.md): keep it off hot paths.

Two trio-asyncio loops in one thread confuse asyncio's notion of the running loop (futures get
bound to the wrong loop and cancellations are lost), so `ensure_loop` refuses to open a second
one: components that run side by side in one process (two managers in a test) must share a loop
opened above them with ``async with trio_asyncio.open_loop():``.

Importing trio_asyncio patches asyncio globally, so this module is only imported when such a
component is used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio
import trio_asyncio

__all__ = ["AioCaller", "Call", "ensure_loop"]

T = TypeVar("T")

_loops_opened_here = 0


@asynccontextmanager
async def ensure_loop() -> AsyncIterator[None]:
    """Run the block inside a trio-asyncio loop: the current one, or a new one it owns.

    Raises RuntimeError if a loop opened by another branch of the task tree is running.
    """
    global _loops_opened_here
    if trio_asyncio.current_loop.get() is not None:
        yield
        return
    if _loops_opened_here:
        raise RuntimeError(
            "another trio-asyncio loop is already running in this thread; components that "
            "run side by side (e.g. two Redis-backed managers) must share one loop: wrap them "
            "in `async with trio_asyncio.open_loop():`"
        )
    _loops_opened_here += 1
    try:
        async with trio_asyncio.open_loop():
            yield
    finally:
        _loops_opened_here -= 1


class AioCaller:
    """Runs asyncio coroutine functions for Trio callers anywhere in the task tree.

    Run it in a nursery (``await nursery.start(caller.run)``); `run` uses the current
    trio-asyncio loop or opens one (see `ensure_loop`). ``await caller.call(fn)`` queues
    ``fn()`` (an asyncio coroutine function) and returns its result or raises its exception,
    whether or not the caller itself runs inside the loop. Calls wait in a bounded queue
    (`queue_size`; when full, callers wait). When `run` ends, queued and running calls fail with
    RuntimeError; a caller cancelled while waiting abandons its call (the call itself finishes).
    """

    def __init__(self, name: str, *, queue_size: int = 256) -> None:
        self.name = name
        self._queue_size = queue_size
        self._send: Any = None

    @property
    def running(self) -> bool:
        return self._send is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        send, receive = trio.open_memory_channel[Call](self._queue_size)
        async with ensure_loop(), trio.open_nursery() as nursery:
            self._send = send
            try:
                task_status.started()
                async for call in receive:
                    nursery.start_soon(call.serve)
            finally:
                self._send = None
                send.close()
                # Calls still queued were never served: answer them (with Call.error).
                while True:
                    try:
                        receive.receive_nowait().done.set()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                receive.close()
                nursery.cancel_scope.cancel()

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        send = self._send
        if send is None:
            raise RuntimeError(f"{self.name} is not running")
        call = Call(fn, "the call did not finish")
        try:
            await send.send(call)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise RuntimeError(f"{self.name} stopped") from None
        result: T = await call.result()
        return result


class Call:
    """One asyncio coroutine function handed from a Trio caller to a server of calls.

    The server runs `serve` inside the trio-asyncio loop; the caller awaits `result`. Until
    `serve` finishes, `error` is ``RuntimeError(unfinished)``: what the caller gets if the
    server is cancelled mid-call, or sets `done` without serving it (after setting `error`).
    """

    __slots__ = ("done", "error", "fn", "value")

    def __init__(self, fn: Callable[[], Awaitable[Any]], unfinished: str) -> None:
        self.fn = fn
        self.done = trio.Event()
        self.value: Any = None
        self.error: BaseException | None = RuntimeError(unfinished)

    async def result(self) -> Any:
        """Waits for `done`; returns the value, or raises the error."""
        await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.value

    async def serve(self) -> None:
        """Runs the call (inside the trio-asyncio loop) and sets `done`."""
        try:
            self.value = await trio_asyncio.aio_as_trio(self.fn)()
            self.error = None
        except Exception as exc:  # handed to the caller
            self.error = exc
        finally:
            self.done.set()

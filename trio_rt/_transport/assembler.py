"""A lighter stand-in for websockets' Trio `Assembler` (frames in, messages out).

websockets' own keeps an unbounded `trio` memory channel per connection; idle, that channel
(its deque and two ordered dicts) is about 1.7 KiB, and a reader parked in it keeps three
coroutines alive (`recv`, `get`, `receive`): together about 2.5 KiB of every idle connection
(docs/performance.md). This one keeps a list and the one waiting task.

Same contract as `websockets.trio.messages.Assembler` for what websockets' `Connection`
calls: `put(frame)` (raises EOFError once closed), `get(decode)` (a whole message; EOFError
once closed and drained; ConcurrencyError for a second concurrent reader; TooManyFragments;
UnicodeDecodeError for bad UTF-8 in a text message), `close()`, flow control through
`pause`/`resume` at the `high`/`low` water marks. Cancelling `get` loses nothing: the frames
of a message in progress stay here until its last frame arrives. `get_iter` (streaming a
fragmented message) is not supported: trio_rt never calls `recv_streaming`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio
from websockets.exceptions import ConcurrencyError, TooManyFragments
from websockets.frames import Frame, Opcode
from websockets.typing import Data

__all__ = ["LightAssembler"]

MAX_FRAGMENTS = int(os.environ.get("WEBSOCKETS_MAX_FRAGMENTS", "4096"))  # as websockets


def _noop() -> None:
    return None


class LightAssembler:
    """Assemble messages from data frames for one reader task (see the module docstring)."""

    __slots__ = (
        "_frames",
        "_partial",
        "_waiter",
        "closed",
        "get_in_progress",
        "high",
        "low",
        "pause",
        "paused",
        "resume",
    )

    def __init__(
        self,
        high: int | None = None,
        low: int | None = None,
        pause: Callable[[], Any] = _noop,
        resume: Callable[[], Any] = _noop,
    ) -> None:
        if high is not None and low is None:
            low = high // 4
        if high is None and low is not None:
            high = low * 4
        if high is not None and low is not None:
            if low < 0:
                raise ValueError("low must be positive or equal to zero")
            if high < low:
                raise ValueError("high must be greater than or equal to low")
        self.high, self.low = high, low
        self.pause = pause
        self.resume = resume
        self.paused = False
        self.get_in_progress = False
        self.closed = False
        self._frames: list[Frame] = []  # received, not taken by get() yet
        self._partial: list[Frame] = []  # taken: the start of a fragmented message
        self._waiter: trio.lowlevel.Task | None = None

    def __len__(self) -> int:
        return len(self._frames)

    async def get(self, decode: bool | None = None) -> Data:
        """The next whole message (see the module docstring for the errors)."""
        if self.get_in_progress:
            raise ConcurrencyError("get() or get_iter() is already running")
        self.get_in_progress = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            partial = self._partial
            waited = False
            while True:
                frames = self._frames
                while frames:
                    frame = frames.pop(0)
                    if partial and len(partial) >= MAX_FRAGMENTS:
                        frames.insert(0, frame)
                        raise TooManyFragments(MAX_FRAGMENTS)
                    partial.append(frame)
                    if frame.fin:
                        self._maybe_resume()
                        self._partial = []
                        if not waited:  # with the check above: one full checkpoint
                            await trio.lowlevel.cancel_shielded_checkpoint()
                        return _message(partial, decode)
                self._maybe_resume()
                if self.closed:
                    raise EOFError("stream of frames ended")
                await self._wait()
                waited = True
        finally:
            self.get_in_progress = False

    async def get_iter(self, decode: bool | None = None) -> AsyncIterator[Data]:
        raise NotImplementedError("trio_rt reads whole messages; recv_streaming is unsupported")
        yield b""  # pragma: no cover - makes this an async generator

    def put(self, frame: Frame) -> None:
        """Add a data frame. Raises EOFError once closed."""
        if self.closed:
            raise EOFError("stream of frames ended")
        self._frames.append(frame)
        if self.high is not None and len(self._frames) > self.high and not self.paused:
            self.paused = True
            self.pause()
        self._wake()

    def close(self) -> None:
        """End the stream of frames: a waiting or later `get` raises EOFError."""
        if self.closed:
            return
        self.closed = True
        self._wake()
        # Break the cycle Connection -> assembler -> bound methods -> Connection.
        self.pause = _noop
        self.resume = _noop

    def _maybe_resume(self) -> None:
        if self.paused and self.low is not None and len(self._frames) <= self.low:
            self.paused = False
            self.resume()

    async def _wait(self) -> None:
        self._waiter = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def _abort(self, _: Any) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _wake(self) -> None:
        task = self._waiter
        if task is not None:
            self._waiter = None
            trio.lowlevel.reschedule(task)


def _message(frames: list[Frame], decode: bool | None) -> Data:
    if decode is None:
        decode = frames[0].opcode is Opcode.TEXT
    data = frames[0].data if len(frames) == 1 else b"".join(f.data for f in frames)
    if decode:
        return bytes(data).decode()
    return bytes(data)

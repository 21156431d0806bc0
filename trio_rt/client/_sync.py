"""The Trio side of the client's waiting: one "something changed" signal, waiting for a
`Completion`, the receive buffer with its waiters, and unwrapping the client's nursery errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

import trio

from ._buffers import ReceiveBuffer
from ._completion import Completion
from ._types import Message

__all__ = ["Inbox", "Signal", "raise_single", "wait_for"]


class Signal:
    """Wake every task waiting for "something changed"; waiters re-check their condition."""

    __slots__ = ("_lot",)

    def __init__(self) -> None:
        self._lot = trio.lowlevel.ParkingLot()

    def fire(self) -> None:
        self._lot.unpark_all()

    async def wait(self) -> None:
        await self._lot.park()


async def wait_for(completion: Completion) -> None:
    """Wait until `completion` is settled; raise its error if it failed. A checkpoint even when
    it already is."""
    if completion.done:
        await trio.lowlevel.checkpoint()
    else:
        event = trio.Event()
        completion.add_done_callback(event.set)
        try:
            await event.wait()
        finally:
            completion.remove_done_callback(event.set)
    completion.check()


class Inbox:
    """The receive buffer (`ReceiveBuffer`, which applies the policy) and the tasks waiting on
    it: receivers park until a message arrives; the reader (policy "wait") and the reconnect
    (policy "reconnect") wait until the app has read enough."""

    __slots__ = ("_changed", "_lot", "_waiting_for_room", "buffer")

    def __init__(self, buffer: ReceiveBuffer, changed: Signal) -> None:
        self.buffer = buffer
        self._changed = changed
        self._lot = trio.lowlevel.ParkingLot()  # receivers waiting for a message
        self._waiting_for_room = False  # the reader or the reconnect waits for the app

    def __len__(self) -> int:
        return len(self.buffer)

    def put(self, message: Message) -> bool:
        """Buffer `message` for the app; never waits. True when the buffer is full under the
        "reconnect" or "wait" policy (`ReceiveBuffer.put`)."""
        full = self.buffer.put(message)
        self._lot.unpark_all()
        return full

    def close(self) -> None:
        """No more messages: receivers drain what is buffered, then get None."""
        self.buffer.closed = True
        self._lot.unpark_all()

    async def take(self) -> Message | None:
        """The next buffered message, waiting for one; None once closed and drained. A
        cancelled call takes nothing."""
        await trio.lowlevel.checkpoint_if_cancelled()
        buffer = self.buffer
        while not buffer:
            if buffer.closed:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return None
            await self._lot.park()
        message = buffer.pop()
        if self._waiting_for_room and not buffer.behind:
            self._changed.fire()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return message

    async def wait_for_app(self, stop: Callable[[], bool]) -> None:
        """Wait until the app has read the buffer down to its `room_mark`, or `stop()`."""
        try:
            while self.buffer.behind and not stop():
                self._waiting_for_room = True
                await self._changed.wait()
        finally:
            self._waiting_for_room = False


def raise_single(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Re-raise the one real exception of a nursery's group (the client hides its nursery)."""
    real = [e for e in group.exceptions if not isinstance(e, trio.Cancelled)]
    if len(real) > 1:
        raise group
    chosen = real[0] if real else group.exceptions[0]
    context = chosen.__context__
    try:
        raise chosen
    finally:
        chosen.__context__ = context
        del chosen, context

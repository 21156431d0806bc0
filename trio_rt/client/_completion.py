"""`Completion`: the one-shot outcome of a request the app may await (a room join, a leave, a
subscription going live). Sans-IO: the core settles it; the I/O side waits for it through a
callback (trio_rt/client/_sync.py `wait_for`)."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Completion"]


class Completion:
    """Pending until settled once: succeeded, or failed with an error built afresh for each
    waiter (one exception object must not be raised in several tasks). Settling again changes
    nothing: the first outcome stays."""

    __slots__ = ("_callbacks", "_done", "_error")

    def __init__(self) -> None:
        self._done = False
        self._error: Callable[[], BaseException] | None = None
        self._callbacks: list[Callable[[], None]] = []

    @property
    def done(self) -> bool:
        return self._done

    @property
    def failed(self) -> bool:
        return self._error is not None

    def succeed(self) -> None:
        self._settle(None)

    def fail(self, make_error: Callable[[], BaseException]) -> None:
        self._settle(make_error)

    def _settle(self, make_error: Callable[[], BaseException] | None) -> None:
        if self._done:
            return
        self._done = True
        self._error = make_error
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """Call `callback` once settled (at once when it already is)."""
        if self._done:
            callback()
        else:
            self._callbacks.append(callback)

    def remove_done_callback(self, callback: Callable[[], None]) -> None:
        """Forget a callback not called yet (a waiter that was cancelled)."""
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def check(self) -> None:
        """Return when it succeeded (or is still pending); raise a fresh error if it failed."""
        if self._error is not None:
            raise self._error()

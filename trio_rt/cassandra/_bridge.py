"""Handing results from other threads (the driver's IO thread, worker threads) to Trio tasks.

The rule: a foreign thread never waits for Trio. It calls ``TrioToken.run_sync_soon`` (which
only appends to a queue and writes a wakeup byte) and returns at once. Everything else happens
on the Trio thread, in :meth:`Handoff._arrive` (one result for one task) or
:meth:`Completions._arrive` (many requests' completions for one task). ``trio.from_thread.*``
is never used: it would block the driver's IO loop until the Trio thread got round to the call.

A waiting task that is cancelled *abandons* the result (a ``ResponseFuture`` cannot be
cancelled). When the result arrives later it goes to ``on_abandoned`` instead, and if the Trio
run has already finished, ``run_sync_soon`` raises ``RunFinishedError``, which is swallowed.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import Any, Generic, TypeVar

import outcome
import trio

T = TypeVar("T")

__all__ = ["Completions", "Handoff", "run_in_worker"]


def _ignore(_result: object) -> None:
    pass


class Handoff(Generic[T]):
    """One result, sent from any thread, received by the Trio task that created this object.

    ``on_settled`` runs on the Trio thread when the result arrives, whether or not anybody is
    still waiting (used to release an in-flight slot). ``on_abandoned`` gets a result nobody
    waits for any more; it must not block, and it may run on the Trio thread or, after the run
    has finished, on the sending thread.

    Create the handoff, start the foreign work, and call :meth:`wait` with no checkpoint in
    between: the result cannot be delivered before the task parks, because delivery itself
    runs on the Trio thread.
    """

    __slots__ = ("_on_abandoned", "_on_settled", "_task", "_token")

    def __init__(
        self,
        on_settled: Callable[[], object] | None = None,
        on_abandoned: Callable[[outcome.Outcome[T]], object] | None = None,
    ) -> None:
        self._token = trio.lowlevel.current_trio_token()
        # The waiting task; None once it has been woken (result, cancel or interrupt).
        self._task: trio.lowlevel.Task | None = trio.lowlevel.current_task()
        self._on_settled = on_settled
        self._on_abandoned = on_abandoned

    # -- any thread ----------------------------------------------------------------------

    def send(self, result: outcome.Outcome[T]) -> None:
        """Deliver `result` (never blocks, never raises)."""
        try:
            self._token.run_sync_soon(self._arrive, result)
        except trio.RunFinishedError:
            if self._on_abandoned is not None:
                self._on_abandoned(result)

    def value(self, value: T, *_args: Any) -> None:
        """Driver callback: ``future.add_callbacks(handoff.value, handoff.error)``."""
        self.send(outcome.Value(value))

    def error(self, exc: BaseException, *_args: Any) -> None:
        """Driver errback."""
        self.send(outcome.Error(exc))

    # -- Trio thread ---------------------------------------------------------------------

    def _arrive(self, result: outcome.Outcome[T]) -> None:
        if self._on_settled is not None:
            self._on_settled()
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task, result)
        elif self._on_abandoned is not None:
            self._on_abandoned(result)

    def _abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED

    def interrupt(self, exc: BaseException) -> None:
        """Wake the waiter now with `exc` (Trio thread); the real result is abandoned."""
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task, outcome.Error(exc))

    async def wait(self) -> T:
        """Park until the result arrives; a cancel abandons it (see the class doc)."""
        result: T = await trio.lowlevel.wait_task_rescheduled(self._abort)
        return result


async def run_in_worker(
    fn: Callable[[], T],
    on_abandoned: Callable[[outcome.Outcome[T]], object] = _ignore,
) -> T:
    """Run blocking `fn` in one of Trio's cached worker threads and wait for it (cancellable).

    Unlike ``trio.to_thread.run_sync(abandon_on_cancel=True)``, an abandoned result is not
    dropped silently: it goes to `on_abandoned` (for example to shut a ``Cluster`` down).
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    handoff: Handoff[T] = Handoff(on_abandoned=on_abandoned)
    trio.lowlevel.start_thread_soon(fn, handoff.send)
    return await handoff.wait()


class Completions:
    """The completions of many requests, collected for ONE Trio task (``execute_many``): no
    task and no handoff per request, and completions that come in together cost one wakeup.

    The driver's callbacks (:meth:`ok`, :meth:`failed`) only post, like :meth:`Handoff.send`.
    On the Trio thread each completion calls ``on_settled`` (release the request's slot),
    lowers :attr:`pending` and keeps the first error; once :attr:`closed` (the task gave up
    waiting) a completion calls ``on_abandoned`` instead. The owner counts :attr:`pending`
    up for each request it sends and parks in :meth:`wait` until something arrives.
    """

    __slots__ = ("_on_abandoned", "_on_settled", "_task", "_token", "closed", "error", "pending")

    def __init__(
        self, on_settled: Callable[[], object], on_abandoned: Callable[[], object]
    ) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._task: trio.lowlevel.Task | None = None
        self._on_settled = on_settled
        self._on_abandoned = on_abandoned
        #: requests sent and not completed yet (the owner counts them up)
        self.pending = 0
        #: the first failure (or the interrupt's exception)
        self.error: BaseException | None = None
        #: set by the owner when it stops waiting: later completions are abandoned
        self.closed = False

    # -- driver callbacks (IO thread): post and return ----------------------------------

    def ok(self, _rows: object) -> None:
        self._post(None)

    def failed(self, exc: BaseException) -> None:
        self._post(exc)

    def _post(self, exc: BaseException | None) -> None:
        with suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._arrive, exc)

    # -- Trio thread -------------------------------------------------------------------

    def _arrive(self, exc: BaseException | None) -> None:
        self._on_settled()
        self.pending -= 1
        if self.closed:
            self._on_abandoned()
            return
        if exc is not None and self.error is None:
            self.error = exc
        self._wake()

    def _wake(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    def interrupt(self, exc: BaseException) -> None:
        """Wake the owner now with `exc` as the error (the session was closed)."""
        if self.error is None:
            self.error = exc
        self._wake()

    async def wait(self) -> None:
        """Park until at least one more completion (or an interrupt)."""
        self._task = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

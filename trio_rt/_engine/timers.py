"""Timers: many keys' deadlines served by one task (no task or cancel scope per key).

The token expiry of every connection and the reorder deadline of every room with history are
each one `Timers` and one task in the manager's nursery.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import trio

__all__ = ["Timers"]

K = TypeVar("K", bound=Hashable)


class Timers(Generic[K]):
    """Deadlines on the Trio clock for keys, and the one task that fires them.

    `set(key, deadline)` gives `key` a deadline, replacing the one it had; `cancel(key)`
    removes it. `run(fire)` (the owner's task, until cancelled) sleeps until the earliest
    deadline and calls ``fire(key)`` (sync, must not wait) once for each key whose deadline
    has passed; `fire` may `set` again. Replaced entries stay in the heap until they come up
    and are skipped, or are compacted away once they outnumber the live ones (amortized O(1)
    per `set`), so memory follows the number of keys.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}
        self._seq = 0  # ties: keys need not be comparable
        self._scope: trio.CancelScope | None = None  # run()'s sleep, while it sleeps

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: object) -> bool:
        return key in self._due

    @property
    def heap_size(self) -> int:
        """Entries in the heap, replaced ones included (for tests of the bound)."""
        return len(self._heap)

    def set(self, key: K, deadline: float) -> None:
        if self._due.get(key) == deadline:
            return
        self._due[key] = deadline
        self._seq += 1
        heap = self._heap
        heapq.heappush(heap, (deadline, self._seq, key))
        if len(heap) > 2 * len(self._due) + 64:
            due = self._due
            heap[:] = [e for e in heap if due.get(e[2]) == e[0]]
            heapq.heapify(heap)
        scope = self._scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    def cancel(self, key: K) -> None:
        self._due.pop(key, None)

    async def run(self, fire: Callable[[K], None]) -> None:
        heap, due = self._heap, self._due
        try:
            while True:
                with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as scope:
                    self._scope = scope
                    await trio.sleep_forever()
                self._scope = None
                now = trio.current_time()
                while heap and heap[0][0] <= now:
                    deadline, _, key = heapq.heappop(heap)
                    if due.get(key) == deadline:
                        del due[key]
                        fire(key)
        finally:
            self._scope = None

"""`PreparedCache`: a `CassandraSession`'s prepared statements, one ``PREPARE`` per query.

``Session.prepare`` only exists as a blocking call: it runs in one of Trio's cached worker
threads (``trio.lowlevel.start_thread_soon``), which posts its result back with
``run_sync_soon`` (the rule of :mod:`._bridge`: a foreign thread never waits for Trio).
Concurrent first uses of a query share that one prepare (a per-query ``trio.Event``); it runs
to completion even if every caller is cancelled, so its result is cached for the next one. A
failed prepare is not cached: the next call tries again. Beyond `size` entries the least
recently used finished one is evicted.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from contextlib import suppress
from functools import partial

import outcome
import trio
from cassandra.query import PreparedStatement

from ._errors import translate

__all__ = ["PreparedCache"]


class _Prepared:
    """A cache entry: the prepared statement, once the (single) prepare has finished."""

    __slots__ = ("done", "error", "statement")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.statement: PreparedStatement | None = None
        self.error: BaseException | None = None


class PreparedCache:
    """Prepared statements by query string (module doc). `prepare` is the driver session's
    blocking ``prepare``; `check_open` raises when the session is closed (it runs before a
    lookup and after every wait)."""

    def __init__(
        self,
        prepare: Callable[[str], PreparedStatement],
        size: int,
        check_open: Callable[[], None],
    ) -> None:
        self._prepare = prepare
        self._size = size
        self._check_open = check_open
        self._entries: OrderedDict[str, _Prepared] = OrderedDict()
        #: ``PREPARE`` round trips started
        self.prepares = 0

    @property
    def cached(self) -> int:
        """Prepared statements in the cache (prepares still running not counted)."""
        return sum(1 for e in self._entries.values() if e.statement is not None)

    async def lookup(self, query: str) -> PreparedStatement:
        """The prepared statement for `query`, preparing it on first use.

        A cached statement is returned without a checkpoint (the request that follows has
        one). Raises what `check_open` raises, or the translated prepare error
        (``CassandraQueryError`` for a bad query)."""
        self._check_open()
        entry = self._entries.get(query)
        if entry is not None and entry.statement is not None:
            self._entries.move_to_end(query)
            return entry.statement
        if entry is None:
            entry = _Prepared()
            self._entries[query] = entry
            self._evict()
            self.prepares += 1
            token = trio.lowlevel.current_trio_token()

            def deliver(result: outcome.Outcome[PreparedStatement]) -> None:
                with suppress(trio.RunFinishedError):
                    token.run_sync_soon(self._arrived, query, entry, result)

            trio.lowlevel.start_thread_soon(partial(self._prepare, query), deliver)
        await entry.done.wait()
        self._check_open()
        if entry.error is not None:
            raise translate(entry.error, "prepare", query) from entry.error
        assert entry.statement is not None
        return entry.statement

    def close(self) -> None:
        """Wake every task waiting for a prepare: they then find the session closed (through
        `check_open`). A prepare still running ends in its thread; its result is dropped."""
        for entry in self._entries.values():
            if not entry.done.is_set():
                entry.done.set()

    def _evict(self) -> None:
        while len(self._entries) > self._size:
            oldest = next(iter(self._entries))
            if not self._entries[oldest].done.is_set():
                break  # still preparing: keep it (the cache may briefly exceed its size)
            del self._entries[oldest]

    def _arrived(
        self, query: str, entry: _Prepared, result: outcome.Outcome[PreparedStatement]
    ) -> None:
        if entry.done.is_set():
            return  # the session was closed meanwhile
        if isinstance(result, outcome.Error):
            entry.error = result.error
            if self._entries.get(query) is entry:
                del self._entries[query]  # the next call tries again
        else:
            entry.statement = result.unwrap()
        entry.done.set()

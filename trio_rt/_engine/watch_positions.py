"""The `WatchPositions` seam: where named change watchers keep their positions.

A named watcher (`ChangeStreamManager.watch(..., name=...)`) saves its position after each
batch of changes and when it stops, and loads it when it starts again, so a restarted server
resumes where it stopped. `ChangeStreamManager` reaches that storage only through this seam:
`MemoryWatchPositions` here (tests, one process that never restarts), and
`trio_rt.cassandra.CassandraWatchPositions` (the default: a table in the database's keyspace).
"""

from __future__ import annotations

import abc

import trio

from .._core.protocol import StreamPosition

__all__ = ["MemoryWatchPositions", "WatchPositions"]


class WatchPositions(abc.ABC):
    """Named watchers' positions, by name.

    Contract (tests/engine/test_watch_positions.py runs it against every implementation):

    - ``load(name)`` returns the position last saved under `name`, or None when none was.
    - ``save(name, position)`` replaces what was saved under `name` (the epoch with the
      offset: a position of another epoch replaces one of the old). Names are any strings
      (`ChangeStreamManager.watch` allows 1 to 200 characters), stored as given; names are
      independent of each other.
    - ``create_schema()`` makes sure the storage exists; idempotent. The default does nothing.

    Every method may raise the backend's errors: the watcher retries a failed load (it does
    not start without its position) and logs a failed save (the next save tries again).
    One watcher saves from one task, so saves of one name never race each other.
    """

    @abc.abstractmethod
    async def load(self, name: str) -> StreamPosition | None: ...

    @abc.abstractmethod
    async def save(self, name: str, position: StreamPosition) -> None: ...

    async def create_schema(self) -> None:
        """Make sure the storage exists (idempotent). Nothing to do by default."""
        await trio.lowlevel.checkpoint()


class MemoryWatchPositions(WatchPositions):
    """Positions in a dict: they live as long as this object (share one object between the
    managers of one process to see a "restart" in a test)."""

    def __init__(self) -> None:
        self._positions: dict[str, StreamPosition] = {}

    async def load(self, name: str) -> StreamPosition | None:
        await trio.lowlevel.checkpoint()
        return self._positions.get(name)

    async def save(self, name: str, position: StreamPosition) -> None:
        await trio.lowlevel.checkpoint()
        self._positions[name] = position

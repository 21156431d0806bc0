"""The change-capture seam between :class:`Database` writes and a change log.

With a :class:`ChangeCapture` set on a ``Database``, every insert/update/delete becomes ONE
logged batch holding the data statement and the capture's own statements (for instance a
change-log row), written with the capture's timestamp (see docs/cassandra.md). trio_rt's
capture is ``trio_rt.ChangeLog`` (change streams).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ._session import Params
from ._table import Table

__all__ = ["CapturedWrite", "Change", "ChangeCapture", "Operation"]

Operation = Literal["insert", "update", "delete"]


@dataclass(frozen=True)
class Change:
    """One write, as seen by a :class:`ChangeCapture` (values in canonical Python form)."""

    table: str
    operation: Operation
    #: primary key columns -> values
    key: dict[str, Any]
    #: insert: the row as written; update: key + changed columns; delete: the key. With
    #: ``Table.capture_full_rows``: the whole row after the write (read before it, merged with
    #: what was written) for an insert or update, the last known row for a delete (the key
    #: alone when there was no row)
    data: dict[str, Any]
    #: the table's definition (set by :class:`Database`): ``definition.to_json(data)``
    definition: Table | None = field(default=None, compare=False, repr=False)


@dataclass
class CapturedWrite:
    """What a capture adds to a write: see :class:`ChangeCapture`."""

    #: microseconds since the epoch; the whole batch is written USING this timestamp
    timestamp: int
    #: extra statements for the SAME logged batch (query, params)
    statements: list[tuple[str, Params]]
    #: opaque, handed back to committed()/failed()
    token: object = None
    #: the change log's own: the stream entry `statements` store, when it knows it
    entry: object = None


class ChangeCapture(Protocol):
    """The seam between :class:`Database` writes and a change log.

    For each write, :class:`Database` calls :meth:`prepare` once (before anything is sent;
    if it raises or returns something else than a :class:`CapturedWrite`, the write is not
    attempted and nothing else is called), then sends the data
    statement plus ``write.statements`` as ONE logged batch with ``write.timestamp``, then
    calls exactly one of :meth:`committed` (the batch succeeded) or :meth:`failed` (it raised,
    or the caller was cancelled; a timed-out or cancelled batch *may* still be applied). The
    two are plain functions called on the Trio thread; they must not raise.
    """

    async def prepare(self, change: Change) -> CapturedWrite: ...

    def committed(self, change: Change, write: CapturedWrite) -> None: ...

    def failed(self, change: Change, write: CapturedWrite, exc: BaseException) -> None: ...

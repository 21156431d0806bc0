"""Reading a query a page at a time: :class:`Page` (what one page request returns) and
:class:`RowIterator` (``CassandraSession.iterate``: ``async for`` over every page's rows).

Both rest on the session's public :meth:`CassandraSession.fetch_page`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from ._session import CassandraSession, Params, Row

__all__ = ["Page", "RowIterator"]


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a query's rows (:meth:`CassandraSession.fetch_page`)."""

    #: the rows of this page (column name -> value); may be empty even before the last page
    rows: list[dict[str, Any]]
    #: where the next page starts (opaque bytes, for the same query and values), or ``None``
    #: after the last page
    paging_state: bytes | None


class RowIterator:
    """Async iterator over a query's rows, one page request at a time (see
    :meth:`CassandraSession.iterate`). Use it from one task at a time."""

    def __init__(
        self,
        session: CassandraSession,
        query: str,
        params: Params | None,
        page_size: int,
        consistency: int | None,
        request_timeout: float | None,
    ) -> None:
        self._session = session
        self._query = query
        self._params = params
        self._page_size = page_size
        self._consistency = consistency
        self._request_timeout = request_timeout
        self._rows: list[Row] = []
        self._index = 0
        self._paging_state: bytes | None = None
        self._finished = False
        self._busy = False
        #: page requests answered so far
        self.pages = 0

    def __aiter__(self) -> RowIterator:
        return self

    async def __anext__(self) -> Row:
        if self._busy:
            raise trio.BusyResourceError("another task is already reading this RowIterator")
        self._busy = True
        try:
            if self._index < len(self._rows):
                await trio.lowlevel.checkpoint()  # before taking the row: a cancel loses none
            else:
                while True:
                    if self._finished:
                        await trio.lowlevel.checkpoint()
                        raise StopAsyncIteration
                    await self._fetch()  # changes nothing unless it succeeds
                    if self._rows:
                        break
            row = self._rows[self._index]
            self._index += 1
            return row
        finally:
            self._busy = False

    async def _fetch(self) -> None:
        page = await self._session.fetch_page(
            self._query,
            self._params,
            paging_state=self._paging_state,
            page_size=self._page_size,
            consistency=self._consistency,
            request_timeout=self._request_timeout,
        )
        # Only now, after a successful fetch, does the iterator move on.
        self.pages += 1
        self._rows = page.rows
        self._index = 0
        self._paging_state = page.paging_state
        self._finished = page.paging_state is None

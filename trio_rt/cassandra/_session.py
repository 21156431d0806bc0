"""A Trio-facing session over cassandra-driver.

Threads involved (see docs/cassandra.md):

* the Trio thread: runs :class:`CassandraSession`'s methods; never blocks on the driver;
* the driver's IO thread (libev): sends requests, parses responses and runs the
  ``ResponseFuture`` callbacks, which only post the result with ``run_sync_soon``
  (:mod:`._bridge`);
* Trio worker threads: the calls that only exist as blocking ones -- building the ``Cluster``
  and connecting, ``Session.prepare`` (once per query string), ``Cluster.shutdown``.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias

import outcome
import trio

try:
    from cassandra import ConsistencyLevel
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, ResponseFuture
    from cassandra.cluster import Session as DriverSession
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
    from cassandra.query import (
        BatchStatement,
        BatchType,
        PreparedStatement,
        SimpleStatement,
        Statement,
        dict_factory,
    )
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "trio_rt.cassandra needs cassandra-driver: pip install 'trio_rt[cassandra]'"
    ) from exc

from .._core.checks import require_positive_ints
from ._bridge import Completions, Handoff, run_in_worker
from ._errors import CassandraError, CassandraQueryError, CassandraUnavailable, preview, translate
from ._paging import Page, RowIterator
from ._prepared import PreparedCache

__all__ = ["CassandraSession", "CassandraStats", "Page", "Params", "Row", "RowIterator"]

#: A result row: column name -> value.
Row: TypeAlias = dict[str, Any]
#: Bind values: positional for ``?`` markers, or a mapping for ``:name`` markers.
Params: TypeAlias = Sequence[Any] | Mapping[str, Any]

_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")
# The driver-side timeout derived from a Trio deadline runs this much past the deadline, so the
# Trio cancel (TooSlowError) wins and the driver's timer only frees the stream afterwards.
_DEADLINE_SLACK = 0.25
_CLOSE_TIMEOUT = 30.0
# The protocol's limit on the statements of one BATCH message (a [short] count).
_MAX_BATCH = 65535
_MAX_TIMESTAMP = 2**63 - 1


@dataclass(frozen=True)
class CassandraStats:
    """Counters of one :class:`CassandraSession` (a snapshot)."""

    #: requests sent with ``execute_async`` (one per page)
    requests: int
    #: requests sent and not answered yet (including abandoned ones)
    in_flight: int
    #: results abandoned because the waiting task was cancelled
    abandoned: int
    #: ``PREPARE`` round trips started (one per distinct query string, unless evicted/failed)
    prepares: int
    #: prepared statements in the cache
    prepared_cached: int


class _PageHandoff(Handoff[Page]):
    """Driver callback that also picks up the paging state (read on the IO thread)."""

    __slots__ = ()

    def page(self, rows: list[Row] | None, future: ResponseFuture) -> None:
        # cassandra-driver: ResponseFuture has no public API for the paging state (only
        # ResultSet.paging_state, which reads this same field); read on the IO thread.
        self.send(outcome.Value(Page(rows or [], future._paging_state)))


def _shutdown_in_thread(result: outcome.Outcome[DriverSession]) -> None:
    """on_abandoned for connect: a Cluster nobody will use. Never blocks the caller."""
    if isinstance(result, outcome.Value):
        trio.lowlevel.start_thread_soon(result.value.cluster.shutdown, lambda _: None)


class _TimestampOverride:
    """Wraps ``Cluster.timestamp_generator`` so one request can carry a chosen timestamp.

    The driver has no per-statement timestamp: ``Session.execute_async`` asks the cluster's
    (public, settable) ``timestamp_generator`` for the request's client-side timestamp,
    synchronously, on the calling thread. While :meth:`use` is active on a thread, calls made
    on that thread return the chosen value; every other call (other threads, other requests)
    goes to the original generator.
    """

    def __init__(self, original: Any) -> None:
        self.original = original
        self._local = threading.local()

    def __call__(self) -> Any:
        forced = getattr(self._local, "value", None)
        if forced is not None:
            return forced
        return self.original()

    def set(self, value: int | None) -> None:
        self._local.value = value


class CassandraSession:
    """A connected Cassandra session for Trio code. Create it with :meth:`connect`.

    All methods are called from Trio tasks (any number of them concurrently). Rows are
    ``dict`` objects (column name -> value). Values are always bound by the driver, never
    spliced into the CQL text: a query with ``params`` goes through a prepared statement,
    prepared once per query string and cached.

    Timeouts: wrap calls in Trio cancel scopes (``trio.fail_after``, ``move_on_after``). The
    driver gets a matching timeout too, so it frees the request's stream shortly after the
    deadline. ``request_timeout`` (per request; the same argument overrides it per call) bounds
    requests whose caller set no deadline; it raises :class:`CassandraTimeout`.
    """

    def __init__(
        self,
        driver_session: DriverSession,
        *,
        request_timeout: float | None,
        max_in_flight: int,
        prepared_cache_size: int,
    ) -> None:
        """Wrap a connected driver session (use :meth:`connect`, which also closes it)."""
        self._session = driver_session
        self._request_timeout = request_timeout
        self._slots = trio.Semaphore(max_in_flight)
        self._prepared = PreparedCache(
            driver_session.prepare, prepared_cache_size, self._check_open
        )
        self._closed = False
        self._requests = 0
        self._in_flight = 0
        self._abandoned = 0
        # Whatever a task is parked on for a response: woken with an error by aclose().
        self._waiting: set[Handoff[Page] | Completions] = set()
        self._timestamps: _TimestampOverride | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        contact_points: Sequence[str] = ("127.0.0.1",),
        port: int = 9042,
        keyspace: str | None = None,
        *,
        request_timeout: float | None = 10.0,
        connect_timeout: float = 30.0,
        consistency: int = ConsistencyLevel.LOCAL_QUORUM,
        local_dc: str | None = None,
        protocol_version: int = 5,
        max_in_flight: int = 1024,
        prepared_cache_size: int = 512,
        **cluster_options: Any,
    ) -> AsyncIterator[CassandraSession]:
        """Connect, yield the session, and shut the cluster down when the block exits.

        ``connect_timeout`` bounds the whole connection (contact, schema and topology
        discovery, ``USE keyspace``); on expiry :class:`CassandraUnavailable` is raised. The
        caller's own cancel scopes work too; an abandoned connection attempt is shut down in
        the background. ``consistency`` is the default for every request; ``max_in_flight``
        bounds the requests this session has outstanding (further calls wait for a slot);
        ``prepared_cache_size`` bounds the prepared-statement cache (least recently used
        entries are evicted). ``cluster_options`` go to :class:`cassandra.cluster.Cluster`
        (``auth_provider``, ``ssl_context``, ...). ``protocol_version`` 5 needs Cassandra 4.0+.
        """
        require_positive_ints(max_in_flight=max_in_flight, prepared_cache_size=prepared_cache_size)
        points = [contact_points] if isinstance(contact_points, str) else list(contact_points)
        if keyspace is not None:
            _check_identifier(keyspace, "keyspace")

        def blocking_connect() -> DriverSession:
            # Cluster() resolves host names, connect() does network round trips: both block.
            profile = ExecutionProfile(
                load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=local_dc)),
                consistency_level=consistency,
                request_timeout=request_timeout,
                row_factory=dict_factory,
            )
            options = dict(cluster_options)
            options.setdefault("connect_timeout", min(connect_timeout, 10.0))
            cluster = Cluster(
                points,
                port=port,
                protocol_version=protocol_version,
                execution_profiles={EXEC_PROFILE_DEFAULT: profile},
                **options,
            )
            try:
                session = cluster.connect(keyspace)
            except BaseException:
                cluster.shutdown()
                raise
            return session

        where = f"connect to {','.join(points)}:{port}"
        try:
            with trio.fail_after(connect_timeout):
                driver_session = await run_in_worker(blocking_connect, _shutdown_in_thread)
        except trio.TooSlowError:
            raise CassandraUnavailable(
                f"Cassandra {where} failed: no session within {connect_timeout} s"
            ) from None
        except TypeError:
            raise  # bad arguments for Cluster(): a bug in the caller, not a Cassandra error
        except Exception as exc:
            raise translate(exc, where) from exc
        session = cls(
            driver_session,
            request_timeout=request_timeout,
            max_in_flight=max_in_flight,
            prepared_cache_size=prepared_cache_size,
        )
        try:
            yield session
        finally:
            await session.aclose()

    async def aclose(self) -> None:
        """Shut the driver's cluster down (in a worker thread, shielded, at most 30 s).

        Idempotent. Later calls raise ``trio.ClosedResourceError``, and so do calls waiting
        for a response, a prepare or an in-flight slot: the driver itself would only fail
        them when their ``request_timeout`` expires.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        closed = "the Cassandra session was closed while the request was in flight"
        for handoff in list(self._waiting):
            handoff.interrupt(trio.ClosedResourceError(closed))
        self._prepared.close()
        # Wake tasks queued for a slot (they then see the session closed). Slots held by
        # abandoned requests are never released after this point (see _settled).
        for _ in range(self._in_flight):
            self._slots.release()
        with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
            await trio.to_thread.run_sync(self._session.cluster.shutdown, abandon_on_cancel=True)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def driver_session(self) -> DriverSession:
        """The underlying ``cassandra.cluster.Session``.

        An escape hatch: its blocking methods (``execute``, ``prepare``, ``set_keyspace``)
        must not be called on the Trio thread.
        """
        return self._session

    @property
    def stats(self) -> CassandraStats:
        return CassandraStats(
            requests=self._requests,
            in_flight=self._in_flight,
            abandoned=self._abandoned,
            prepares=self._prepared.prepares,
            prepared_cached=self._prepared.cached,
        )

    # -- requests --------------------------------------------------------------------------

    async def execute(
        self,
        query: str,
        params: Params | None = None,
        *,
        consistency: int | None = None,
        request_timeout: float | None = None,
        page_size: int | None = None,
    ) -> list[Row]:
        """Run one CQL statement and return all its rows (``[]`` for writes and DDL).

        With `params` (even empty) the query is prepared (once, cached) and the values bound.
        Without, it is sent as a simple statement: use that for DDL and constant queries only.
        A result larger than one page (`page_size` rows, driver default 5000) is fetched page
        by page and concatenated: for big results use :meth:`iterate`. `request_timeout` is
        the driver-side limit per page request (default: the session's ``request_timeout``).

        Raises :class:`CassandraQueryError` (a bad query), :class:`CassandraUnavailable` /
        :class:`CassandraTimeout` (transient), :class:`CassandraError` (other failures).
        """
        statement = await self._statement(query, params, consistency, page_size)
        page = await self._request(statement, query, None, request_timeout)
        rows = page.rows
        while page.paging_state is not None:
            page = await self._request(statement, query, page.paging_state, request_timeout)
            rows.extend(page.rows)
        return rows

    async def execute_many(
        self,
        query: str,
        params: Iterable[Params],
        *,
        concurrency: int = 64,
        consistency: int | None = None,
        request_timeout: float | None = None,
    ) -> int:
        """Run prepared `query` once per item of `params`, up to `concurrency` at a time.

        For bulk writes from one task: there is no task per request, and responses that come
        in together are handled in one wakeup. Result rows are discarded; the number of
        statements run is returned. The first failure is raised at once: nothing more is sent
        and the requests still out are abandoned (any of them may still be applied). `params`
        is consumed lazily, so it can be a generator. Cancelling abandons the requests still
        out, like a cancelled :meth:`execute`.
        """
        require_positive_ints(concurrency=concurrency)
        prepared = await self._prepared.lookup(query)
        await trio.lowlevel.checkpoint_if_cancelled()
        batch = Completions(on_settled=self._settled, on_abandoned=self._abandon)
        self._waiting.add(batch)
        sent = 0
        try:
            for values in params:
                while batch.pending >= concurrency and batch.error is None:
                    await batch.wait()
                if batch.error is not None:
                    break
                statement = _bind(prepared, values, query)
                if consistency is not None:
                    statement.consistency_level = consistency
                self._check_open()
                try:
                    self._slots.acquire_nowait()
                except trio.WouldBlock:
                    await self._slots.acquire()
                try:
                    self._check_open()
                    future = self._session.execute_async(
                        statement, timeout=self._driver_timeout(request_timeout)
                    )
                except BaseException as exc:
                    self._slots.release()
                    if isinstance(exc, Exception) and not isinstance(exc, trio.ClosedResourceError):
                        raise translate(exc, "execute_many", query) from exc
                    raise
                self._requests += 1
                self._in_flight += 1
                batch.pending += 1
                future.add_callbacks(batch.ok, batch.failed)
                sent += 1
            while batch.pending and batch.error is None:
                await batch.wait()
        finally:
            batch.closed = True
            self._waiting.discard(batch)
        if batch.error is not None:
            if isinstance(batch.error, trio.ClosedResourceError):
                raise batch.error
            raise translate(batch.error, "execute_many", query) from batch.error
        if sent == 0:
            await trio.lowlevel.checkpoint()
        return sent

    async def execute_batch(
        self,
        statements: Sequence[tuple[str, Params]],
        *,
        logged: bool = True,
        timestamp: int | None = None,
        consistency: int | None = None,
        request_timeout: float | None = None,
    ) -> list[Row]:
        """Run `statements` (query, params) as ONE ``BATCH`` of prepared statements.

        ``logged=True`` (the default) sends a LOGGED batch: Cassandra applies all of it or,
        after a coordinator failure, replays it from the batch log, so either every statement
        is eventually applied or none is (no isolation across partitions). ``logged=False``
        sends an UNLOGGED batch (no such guarantee across partitions). A statement rejected by
        the server (a bad query, a bind error, an oversized batch) fails the whole batch:
        nothing is written.

        `timestamp` (microseconds since the epoch) is the write time of every statement in
        the batch (what ``WRITETIME()`` returns); by default the driver's client-side
        timestamp generator supplies one. Each query is prepared once and cached, like in
        :meth:`execute`; `params` must be given for each (use ``()`` when there is none).
        The result is ``[]``, or the ``[applied]`` row of a conditional batch.

        Errors, timeouts and cancellation are those of :meth:`execute`: a cancelled call
        abandons its request, which may or may not be applied. Raises ``ValueError`` (no
        statement, more than 65,535, a bad `timestamp`) before anything is sent, and
        :class:`CassandraQueryError` for bind errors (naming the statement's query).
        """
        items = list(statements)
        if not items:
            raise ValueError("execute_batch needs at least one statement")
        if len(items) > _MAX_BATCH:
            raise ValueError(f"a batch holds at most {_MAX_BATCH} statements, got {len(items)}")
        for item in items:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
                raise TypeError("execute_batch takes (query, params) tuples")
        if timestamp is not None:
            if isinstance(timestamp, bool) or not isinstance(timestamp, int):
                raise TypeError("timestamp must be an int (microseconds since the epoch)")
            if not 0 <= timestamp <= _MAX_TIMESTAMP:
                raise ValueError("timestamp must be between 0 and 2**63 - 1 microseconds")
            if not self._session.use_client_timestamp:
                raise ValueError("timestamp needs the driver session's use_client_timestamp")
        batch = BatchStatement(batch_type=BatchType.LOGGED if logged else BatchType.UNLOGGED)
        for query, params in items:
            prepared = await self._prepared.lookup(query)
            batch.add(_bind(prepared, params, query))
        if consistency is not None:
            batch.consistency_level = consistency
        first = items[0][0]
        summary = first if len(items) == 1 else f"BATCH of {len(items)}: {first}; ..."
        page = await self._request(batch, summary, None, request_timeout, timestamp=timestamp)
        return page.rows

    def iterate(
        self,
        query: str,
        params: Params | None = None,
        *,
        page_size: int = 1000,
        consistency: int | None = None,
        request_timeout: float | None = None,
    ) -> RowIterator:
        """Rows of a query, fetched a page (`page_size` rows) at a time: ``async for row in``.

        Each page is a separate request (carrying the previous page's paging state); the next
        page is requested when the current one is used up. Cancelling a fetch leaves the
        iterator where it was: the next ``__anext__`` asks for the same page again.
        """
        require_positive_ints(page_size=page_size)
        return RowIterator(self, query, params, page_size, consistency, request_timeout)

    async def fetch_page(
        self,
        query: str,
        params: Params | None = None,
        *,
        paging_state: bytes | None = None,
        page_size: int = 1000,
        consistency: int | None = None,
        request_timeout: float | None = None,
    ) -> Page:
        """One page request: up to `page_size` rows of the query, starting where
        `paging_state` (from the previous :class:`Page` of the same query and values) says,
        or at the beginning when it is ``None``.

        ``Page.paging_state`` is ``None`` after the last page. A page may hold fewer rows
        than `page_size`, even none, before the last one. :meth:`iterate` is built on this;
        use it directly to hand a paging state to someone else (for instance a web client
        asking for "more"). Prepared like :meth:`execute` when `params` is given; errors,
        timeouts and cancellation as :meth:`execute`.
        """
        statement = await self._statement(query, params, consistency, page_size)
        return await self._request(statement, query, paging_state, request_timeout)

    async def prepare(self, query: str) -> PreparedStatement:
        """The prepared statement for `query`, preparing it on first use (cached).

        Concurrent first calls share one ``PREPARE``. The prepare runs to completion even if
        every caller is cancelled, so its result is cached for the next caller. A failed
        prepare is not cached.
        """
        await trio.lowlevel.checkpoint()
        return await self._prepared.lookup(query)

    async def create_keyspace(
        self, name: str, replication_factor: int = 1, *, if_not_exists: bool = True
    ) -> None:
        """``CREATE KEYSPACE`` with ``SimpleStrategy`` and `replication_factor`.

        Identifiers cannot be bound, so `name` is checked strictly: a letter, then letters,
        digits or ``_``, 48 characters at most (unquoted, so Cassandra folds it to lower case).
        """
        _check_identifier(name, "keyspace")
        require_positive_ints(replication_factor=replication_factor)
        exists = " IF NOT EXISTS" if if_not_exists else ""
        await self.execute(
            f"CREATE KEYSPACE{exists} {name} WITH replication = "
            f"{{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}"
        )

    async def drop_keyspace(self, name: str, *, if_exists: bool = True) -> None:
        """``DROP KEYSPACE`` (name checked like :meth:`create_keyspace`)."""
        _check_identifier(name, "keyspace")
        await self.execute(f"DROP KEYSPACE{' IF EXISTS' if if_exists else ''} {name}")

    # -- internals -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the Cassandra session is closed")

    async def _statement(
        self,
        query: str,
        params: Params | None,
        consistency: int | None,
        page_size: int | None,
    ) -> Statement:
        statement: Statement
        if params is None:
            self._check_open()
            await trio.lowlevel.checkpoint_if_cancelled()
            statement = SimpleStatement(query)
        else:
            prepared = await self._prepared.lookup(query)
            statement = _bind(prepared, params, query)
        if consistency is not None:
            statement.consistency_level = consistency
        if page_size is not None:
            require_positive_ints(page_size=page_size)
            statement.fetch_size = page_size
        return statement

    def _driver_timeout(self, request_timeout: float | None) -> float | None:
        limit = self._request_timeout if request_timeout is None else request_timeout
        deadline = trio.current_effective_deadline()
        if deadline != math.inf:
            remaining = max(deadline - trio.current_time(), 0.0) + _DEADLINE_SLACK
            limit = remaining if limit is None else min(limit, remaining)
        return limit

    def _timestamp_override(self) -> _TimestampOverride:
        """The wrapper around the cluster's timestamp generator (installed on first use)."""
        if self._timestamps is None:
            cluster = self._session.cluster
            current = cluster.timestamp_generator
            if not isinstance(current, _TimestampOverride):
                current = _TimestampOverride(current)
                cluster.timestamp_generator = current
            self._timestamps = current
        return self._timestamps

    def _settled(self) -> None:
        self._in_flight -= 1
        if not self._closed:
            self._slots.release()

    def _abandon(self, _result: object = None) -> None:
        self._abandoned += 1

    async def _request(
        self,
        statement: Statement,
        query: str,
        paging_state: bytes | None,
        request_timeout: float | None,
        *,
        timestamp: int | None = None,
    ) -> Page:
        """One request/response through the bridge: the core of the module.

        Its only schedule point is the wait for the response (plus the wait for a slot when
        ``max_in_flight`` requests are out); a cancel that is already pending is honoured
        before anything is sent.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            await self._slots.acquire()
        try:
            self._check_open()
            handoff = _PageHandoff(on_settled=self._settled, on_abandoned=self._abandon)
            if timestamp is not None:
                self._timestamp_override().set(timestamp)
            try:
                future = self._session.execute_async(
                    statement,
                    timeout=self._driver_timeout(request_timeout),
                    paging_state=paging_state,
                )
            finally:
                if timestamp is not None:
                    self._timestamp_override().set(None)
        except BaseException as exc:
            self._slots.release()
            if isinstance(exc, Exception) and not isinstance(exc, trio.ClosedResourceError):
                raise translate(exc, "execute", query) from exc
            raise
        self._requests += 1
        self._in_flight += 1
        # No checkpoint between here and wait(): the callbacks may run on the IO thread at
        # once (or on this thread, if the response is already in), but they only post.
        future.add_callbacks(handoff.page, handoff.error, callback_args=(future,))
        self._waiting.add(handoff)
        try:
            return await handoff.wait()
        except (CassandraError, trio.ClosedResourceError):
            raise
        except Exception as exc:
            raise translate(exc, "execute", query) from exc
        finally:
            self._waiting.discard(handoff)


def _bind(prepared: PreparedStatement, params: Params, query: str) -> Statement:
    try:
        return prepared.bind(params)
    except (TypeError, ValueError, KeyError) as exc:
        raise CassandraQueryError(
            f"Cassandra bind failed: {type(exc).__name__}: {exc} [query: {preview(query)}]",
            query=query,
        ) from exc


def _check_identifier(name: str, what: str) -> None:
    if not isinstance(name, str) or _IDENTIFIER.fullmatch(name) is None:
        raise ValueError(
            f"invalid {what} name {name!r}: use a letter, then letters, digits or '_' "
            "(48 characters at most)"
        )

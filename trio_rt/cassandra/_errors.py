"""trio_rt's Cassandra exceptions, and the mapping from cassandra-driver's exceptions.

The driver raises two families of exception types for server errors: ``cassandra.*`` (for
example ``InvalidRequest``, ``ReadTimeout``) and ``cassandra.protocol.*`` error messages that it
passes on unconverted (for example ``SyntaxException``, ``ServerError``). Callers of
:class:`~trio_rt.cassandra.CassandraSession` see neither: they get one of the classes below,
with the driver's exception as ``__cause__``.
"""

from __future__ import annotations

import cassandra
import cassandra.protocol as protocol
from cassandra.cluster import NoHostAvailable
from cassandra.connection import ConnectionException
from cassandra.pool import NoConnectionsAvailable

from .._core.errors import TrioRTError

__all__ = [
    "CassandraError",
    "CassandraQueryError",
    "CassandraTimeout",
    "CassandraUnavailable",
    "translate",
]

#: How much of the query text an error message shows.
QUERY_PREVIEW = 120


class CassandraError(TrioRTError):
    """A Cassandra request failed. The driver's exception, if any, is ``__cause__``.

    ``query`` is the CQL text of the failed request (``None`` for connecting/closing).
    ``transient`` is true when trying again later may succeed.
    """

    transient = False

    def __init__(self, message: str, *, query: str | None = None) -> None:
        super().__init__(message)
        self.query = query


class CassandraUnavailable(CassandraError):
    """Transient: no host, not enough replicas, an overloaded or starting node, a lost connection.

    Retrying later (with backoff) may succeed. Timeouts are a subclass.
    """

    transient = True


class CassandraTimeout(CassandraUnavailable):
    """The driver or the coordinator gave up waiting (client ``OperationTimedOut``, server
    ``ReadTimeout``/``WriteTimeout``). A write that timed out may still have been applied.

    A Trio deadline (``trio.fail_after``) raises ``trio.TooSlowError`` instead, as usual.
    """


class CassandraQueryError(CassandraError):
    """The server refused the request as written: CQL syntax, an unknown table or column,
    wrong bind values, a schema conflict (``AlreadyExists``) or missing permissions.

    Retrying the same request will fail the same way: it is a bug in the query or the schema.
    """


_TIMEOUT: tuple[type[BaseException], ...] = (
    cassandra.OperationTimedOut,
    cassandra.Timeout,  # ReadTimeout, WriteTimeout
    protocol.ReadTimeoutErrorMessage,
    protocol.WriteTimeoutErrorMessage,
)
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    NoHostAvailable,
    NoConnectionsAvailable,
    ConnectionException,
    cassandra.Unavailable,
    protocol.UnavailableErrorMessage,
    protocol.OverloadedErrorMessage,
    protocol.IsBootstrappingErrorMessage,
)
_QUERY: tuple[type[BaseException], ...] = (
    cassandra.RequestValidationException,  # InvalidRequest, ConfigurationException, ...
    protocol.RequestValidationException,  # SyntaxException, protocol.ConfigurationException, ...
)


def preview(query: str | None) -> str:
    """The query on one line, cut to :data:`QUERY_PREVIEW` characters."""
    if query is None:
        return ""
    flat = " ".join(query.split())
    if len(flat) > QUERY_PREVIEW:
        flat = flat[: QUERY_PREVIEW - 3] + "..."
    return flat


def _describe(exc: object) -> str:
    if not isinstance(exc, BaseException):
        return str(exc)
    if isinstance(exc, NoHostAvailable) and isinstance(getattr(exc, "errors", None), dict):
        # The driver's repr of this one is a tuple holding a dict of reprs: say it plainly.
        per_host = "; ".join(f"{host}: {_describe(err)}" for host, err in exc.errors.items())
        return f"no host could serve the request ({per_host})"
    if isinstance(exc, protocol.ErrorMessage):
        # 'Error from server: code=2000 [Syntax error in CQL query] message="..."'
        return str(exc.summary_msg())
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def translate(exc: BaseException, what: str, query: str | None = None) -> CassandraError:
    """Wrap a driver exception as the matching :class:`CassandraError` subclass.

    The caller raises the result ``from exc``. ``what`` names the operation ("execute",
    "prepare", "connect to 127.0.0.1:9042", ...).
    """
    if isinstance(exc, CassandraError):
        return exc
    cls: type[CassandraError]
    inner: list[object] = []
    if isinstance(exc, NoHostAvailable) and isinstance(getattr(exc, "errors", None), dict):
        inner = list(exc.errors.values())
    if isinstance(exc, _TIMEOUT) or (inner and all(isinstance(e, _TIMEOUT) for e in inner)):
        cls = CassandraTimeout
    elif isinstance(exc, _UNAVAILABLE):
        cls = CassandraUnavailable
    elif isinstance(exc, _QUERY):
        cls = CassandraQueryError
    else:
        cls = CassandraError
    message = f"Cassandra {what} failed: {_describe(exc)}"
    if query is not None:
        message += f" [query: {preview(query)}]"
    return cls(message, query=query)

"""The seam to ring 3: what the engine needs from the socket objects the transport builds.

The transport (`_transport/ws_connection.py`, `_transport/direct_stream.py`) builds these
objects; the engine sees them only through the protocols here, so `_engine` imports
`_transport` at one place alone: the manager starting the server
(tests/test_import_graph.py checks it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .connection import Connection

__all__ = [
    "BROKEN",
    "BUSY",
    "CORKED",
    "CORKED_FULL",
    "PARTIAL",
    "WROTE",
    "DirectWrites",
    "HostedSocket",
]

# What `DirectWrites.send_frame` did (small ints: a fan-out compares them once per recipient).
WROTE = 0  # the kernel took it all
PARTIAL = 1  # the rest is pending: whoever writes next sends it first (wake a writer)
BUSY = 2  # not idle, or frames are corked: nothing done, the caller queues the frame
BROKEN = 3  # the socket is closed or broken: dropped (the reader sees it and ends)
# What `DirectWrites.cork_more` did (or BUSY: nothing was corked, nothing done).
CORKED = 4  # added to the corked frames
CORKED_FULL = 5  # added, and the corked frames reached the bound: flush them now


@runtime_checkable
class DirectWrites(Protocol):
    """A socket stream that can also be written synchronously (`DirectStream`): frames are
    sent at once when the socket is `idle`, or corked until the `FlushQueue` flushes them.
    `Connection` checks for it once, when it opens (plain TCP has it; TLS does not). The
    handshake may leave the upgrade response corked: `Connection.run` flushes it first."""

    @property
    def pending(self) -> int:
        """Bytes the kernel did not take yet: whoever writes next sends them first."""

    @property
    def corking(self) -> bool:
        """Frames are corked, waiting for the next `flush` (or write)."""

    @property
    def idle(self) -> bool:
        """No write in progress, the connection's send lock free and nothing pending: `send_now`
        and `cork` may be called."""

    def cork(self, data: bytes) -> bool:
        """Keep `data` for the next flush; True once the corked frames must go out now."""

    def flush(self) -> bool:
        """Write the corked frames; False if the socket is closed or broken."""

    def uncork_to_pending(self) -> None:
        """Make the corked frames pending: the next write (any task's) sends them first."""

    def send_now(self, data: bytes) -> bool:
        """One non-blocking send of `data` (corked frames first); False if closed or broken."""

    def send_frame(self, data: bytes) -> int:
        """`send_now` with the `idle` check in the same call (and nothing corked): WROTE,
        PARTIAL (the rest is pending), BUSY (not idle: nothing done) or BROKEN."""

    def cork_more(self, data: bytes) -> int:
        """`cork` for a burst's later frames, in one call: when frames are corked already,
        add `data` to them (CORKED, or CORKED_FULL: flush now); otherwise BUSY, nothing done."""


class HostedSocket(Protocol):
    """websockets' `ServerConnection` as the transport builds it: it carries the `Connection`
    it serves (the handshake sets it; the heartbeat's pongs and the handler read it), and
    has no reader task of its own: whoever serves it reads it (`read_events`)."""

    trio_rt_conn: Connection | None

    @property
    def messages_queued(self) -> int:
        """Frames received and not yet taken by `recv`."""

    async def read_events(self) -> bool:
        """Read the socket once and process what came (pongs and the close handshake are
        answered, data frames queued for `recv`); False once the stream has ended (the
        connection is then CLOSED). One task reads: `Connection.run`, once open."""

    async def close_stream(self) -> None:
        """Close the stream: the connection is CLOSED, `recv` raises ConnectionClosed."""

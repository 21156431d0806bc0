"""A connection's bounded outbox and the slow-consumer policy, sans-IO.

The broadcaster never waits on a client: it offers a message to each recipient's outbox and moves
on. The outbox is bounded in messages and in bytes; what happens when it is full is a named policy.
The writer task takes everything queued at once and writes it in one go.
"""

from __future__ import annotations

import zlib
from enum import StrEnum
from typing import Any, Final

from .checks import require_positive_ints
from .protocol import encode_text_frame

__all__ = ["DeflateKey", "Offer", "OutboundMessage", "Outbox", "SlowConsumerPolicy"]

# permessage-deflate parameters that determine the compressed bytes of a message when the server
# keeps no context between messages: (window bits, zlib.compressobj settings as sorted items).
DeflateKey = tuple[int, tuple[tuple[str, Any], ...]]
_EMPTY_BLOCK = b"\x00\x00\xff\xff"  # what Z_SYNC_FLUSH ends with; RFC 7692 strips it


class SlowConsumerPolicy(StrEnum):
    """What to do when a connection's outbox is full.

    - ``disconnect`` (default): close the connection with code 4000 (slow consumer). The client
      reconnects and recovers; the server's memory stays bounded and nobody else waits.
    - ``drop_newest``: discard the message being offered; the client silently misses it.
    - ``drop_oldest``: discard the oldest queued message to make room for the new one.
    """

    DISCONNECT = "disconnect"
    DROP_NEWEST = "drop_newest"
    DROP_OLDEST = "drop_oldest"


class Offer(StrEnum):
    QUEUED = "queued"
    DROPPED = "dropped"  # the policy dropped a message (new or old); the connection lives
    OVERFLOW = "overflow"  # policy is disconnect: the caller must close the connection
    CLOSED = "closed"  # the outbox is closed; nothing more is accepted


class OutboundMessage:
    """One server message, serialized once and shared by every recipient.

    `payload` is the UTF-8 JSON of a text frame. `frame` is that payload framed for connections
    without extensions (computed on first use, so a broadcast frames once). `deflated_frame`
    is the same for connections that negotiated permessage-deflate with
    server_no_context_takeover: compressed once per broadcast and parameter set.
    """

    __slots__ = ("_deflated", "framed", "payload")

    def __init__(self, payload: bytes) -> None:
        self.payload: Final = payload
        self.framed: bytes | None = None  # `frame` once built: read it first (no call)
        self._deflated: dict[DeflateKey, bytes] | None = None

    @property
    def frame(self) -> bytes:
        framed = self.framed
        if framed is None:
            framed = self.framed = encode_text_frame(self.payload)
        return framed

    def deflated_frame(self, key: DeflateKey) -> bytes:
        """The message as one compressed (RSV1) final text frame, as websockets'
        PerMessageDeflate would build it for a server without context takeover: a fresh
        raw-deflate stream per message, sync-flushed, its empty trailing block removed."""
        cache = self._deflated
        if cache is None:
            cache = self._deflated = {}
        frame = cache.get(key)
        if frame is None:
            wbits, settings = key
            encoder = zlib.compressobj(wbits=-wbits, **dict(settings))
            data = encoder.compress(self.payload) + encoder.flush(zlib.Z_SYNC_FLUSH)
            assert data.endswith(_EMPTY_BLOCK)
            frame = cache[key] = _frame(0xC1, data[:-4])  # FIN, RSV1, text
        return frame

    def __len__(self) -> int:
        return len(self.payload)


def _frame(first_byte: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        header = bytes((first_byte, n))
    elif n < 65536:
        header = bytes((first_byte, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((first_byte, 127)) + n.to_bytes(8, "big")
    return header + payload


class Outbox:
    """A FIFO bounded by `max_messages` and `max_bytes`, with a slow-consumer policy.

    A single message larger than `max_bytes` is still accepted into an empty outbox (otherwise it
    could never be sent); the byte bound applies to what is queued behind it.

    `queue` (the messages waiting, oldest first) and `sealed` (`closed`) are plain attributes
    for a fan-out's per-recipient check, to read only: the methods change them.
    """

    __slots__ = (
        "_bytes",
        "_closed",
        "dropped",
        "max_bytes",
        "max_messages",
        "policy",
        "queue",
        "sealed",
    )

    def __init__(
        self,
        max_messages: int = 1024,
        max_bytes: int = 4 * 1024 * 1024,
        policy: SlowConsumerPolicy = SlowConsumerPolicy.DISCONNECT,
    ) -> None:
        # One outbox per connection: the common case (ints >= 1, already checked by
        # ServerOptions) skips building the checker's keyword dict and generator.
        if not (
            type(max_messages) is int and type(max_bytes) is int and max_messages >= 1 <= max_bytes
        ):
            require_positive_ints(max_messages=max_messages, max_bytes=max_bytes)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.policy = policy if type(policy) is SlowConsumerPolicy else SlowConsumerPolicy(policy)
        # A list, not a deque: an empty deque costs ~770 bytes a connection, a list ~60, and
        # take_all hands the whole list over without copying.
        self.queue: list[OutboundMessage] = []
        self._bytes = 0
        self._closed = False
        self.sealed = False
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.queue)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    @property
    def closed(self) -> bool:
        """True once the outbox refuses new messages (sealed or closed)."""
        return self.sealed

    @property
    def aborted(self) -> bool:
        """True once `close` dropped the queue (as opposed to `seal`, which keeps it)."""
        return self._closed

    def _fits(self, size: int) -> bool:
        if not self.queue:
            return True
        return len(self.queue) < self.max_messages and self._bytes + size <= self.max_bytes

    def offer(self, message: OutboundMessage) -> Offer:
        if self.sealed:
            return Offer.CLOSED
        size = len(message)
        if not self._fits(size):
            if self.policy is SlowConsumerPolicy.DISCONNECT:
                return Offer.OVERFLOW
            if self.policy is SlowConsumerPolicy.DROP_NEWEST:
                self.dropped += 1
                return Offer.DROPPED
            while self.queue and not self._fits(size):
                old = self.queue.pop(0)
                self._bytes -= len(old)
                self.dropped += 1
            self.queue.append(message)
            self._bytes += size
            return Offer.DROPPED
        self.queue.append(message)
        self._bytes += size
        return Offer.QUEUED

    def push_front(self, message: OutboundMessage) -> None:
        """Queue `message` ahead of everything (the welcome), ignoring the bounds."""
        if not self.sealed:
            self.queue.insert(0, message)
            self._bytes += len(message)

    def take_all(self) -> list[OutboundMessage]:
        """Remove and return everything queued, oldest first."""
        items = self.queue
        self.queue = []
        self._bytes = 0
        return items

    def seal(self) -> None:
        """Refuse further messages; what is queued can still be taken (graceful close)."""
        self.sealed = True

    def close(self) -> None:
        """Refuse further messages and drop what is queued."""
        self.sealed = True
        self._closed = True
        self.queue.clear()
        self._bytes = 0

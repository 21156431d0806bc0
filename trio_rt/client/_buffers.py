"""The client's two bounded buffers and their named overflow policies. Sans-IO: what is kept,
dropped or refused is decided here; waiting is the I/O side's (trio_rt/client/_sync.py).

- `ClientOutbox`: what goes to the server, in order: application messages (``send()``) and,
  between them, the room and subscription operations that are rendered into requests only
  when written (`Item`). Bounded in application messages; when full and the client is not
  connected, the ``overflow`` policy says what ``send()`` does (`when_full`).
- `ReceiveBuffer`: what came from the server for the app. The reader never waits for the
  app: when the buffer holds ``receive_buffer`` messages the ``receive_overflow`` policy
  applies (`put`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from ._completion import Completion
from ._types import ClientStats, Message, OverflowPolicy, ReceiveOverflowPolicy

if TYPE_CHECKING:
    from ._queries import Query

__all__ = [
    "DATA",
    "JOIN",
    "LEAVE",
    "PUBLISH",
    "QUERY",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "ClientOutbox",
    "Item",
    "ReceiveBuffer",
]

DATA: Final = "data"  # an application message, encoded
JOIN: Final = "join"
LEAVE: Final = "leave"
SUBSCRIBE: Final = "subscribe"  # `room` holds the subscription's client-side key
UNSUBSCRIBE: Final = "unsubscribe"  # `room` holds the server's subscription id
PUBLISH: Final = "publish"  # an acknowledged publish: `room` holds its id, `text` its frame
QUERY: Final = "query"  # a one-shot request (`query`), resent on the next connection


@dataclass(eq=False, slots=True)
class Item:
    """An outbox entry: an application message, or a room operation resolved when written."""

    kind: str
    text: str = ""
    room: str = ""
    waiter: Completion | None = None
    seq: int = 0  # application messages queued by send(): 1, 2, 3... (others: 0)
    query: Query | None = None  # a QUERY item's request


class ClientOutbox:
    """The outbox (see the module docstring). Every item leaves it once: written (`pop` then
    `settle`), dropped by the policy, or discarded at close; an item is never written twice.

    ``flush()`` waits on sequence numbers: `enqueued_seq` is the number of the last message
    ``send()`` queued, `settled_seq` the number up to which every message was written, lost or
    dropped."""

    def __init__(self, size: int, overflow: OverflowPolicy, stats: ClientStats) -> None:
        self.size = size
        self.overflow: OverflowPolicy = overflow
        self._stats = stats
        self._items: deque[Item] = deque()
        self.queued = 0  # application messages in the outbox
        self.enqueued_seq = 0
        self.settled_seq = 0

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self._items)

    @property
    def full(self) -> bool:
        return self.queued >= self.size

    def when_full(self, *, connected: bool) -> Literal["wait", "raise", "drop_oldest"]:
        """What ``send()`` does when the outbox is full: while connected it waits (backpressure
        from the socket); otherwise the ``overflow`` policy decides."""
        if connected or self.overflow == "wait":
            return "wait"
        return self.overflow

    def put_message(self, text: str) -> None:
        """Queue an application message (the caller made room first)."""
        self.enqueued_seq += 1
        self._items.append(Item(DATA, text=text, seq=self.enqueued_seq))
        self.queued += 1

    def put_message_first(self, text: str) -> None:
        """Queue a message of the client's own ahead of everything (a history refetch). It
        counts as queued but has no sequence number: ``flush()`` does not wait for it."""
        self._items.appendleft(Item(DATA, text=text))
        self.queued += 1

    def put(self, item: Item) -> None:
        """Queue a room or subscription operation after what is queued."""
        self._items.append(item)

    def put_first(self, item: Item) -> None:
        """Queue an operation ahead of everything (an unsubscribe the server must hear first)."""
        self._items.appendleft(item)

    def drop_oldest(self) -> None:
        """The "drop_oldest" policy: discard the oldest application message."""
        for index, item in enumerate(self._items):
            if item.kind == DATA:
                del self._items[index]
                self.queued -= 1
                self._stats.dropped += 1
                self.settled_seq = max(self.settled_seq, item.seq)
                return

    def pop(self) -> Item:
        """The next item to write; `settle` it once written (or once the write failed)."""
        item = self._items.popleft()
        if item.kind == DATA:
            self.queued -= 1
        return item

    def settle(self, item: Item, *, written: bool) -> None:
        """A popped item was written, or its write failed (the message is lost: not resent)."""
        if item.kind == DATA:
            self.settled_seq = max(self.settled_seq, item.seq)
            if written:
                self._stats.sent += 1
            else:
                self._stats.lost += 1

    def settled(self, seq: int) -> bool:
        """True once every message up to number `seq` left the outbox."""
        return self.settled_seq >= seq

    def connection_ended(self) -> None:
        """The connection ended: a queued leave is done (no connection holds the room any
        more) and a queued unsubscribe is moot (subscriptions end with their connection);
        everything else waits for the next connection."""
        kept: deque[Item] = deque()
        for item in self._items:
            if item.kind == LEAVE:
                assert item.waiter is not None
                item.waiter.succeed()
            elif item.kind != UNSUBSCRIBE:
                kept.append(item)
        self._items = kept

    def discard(self) -> None:
        """The client closed: every message still queued is discarded (``stats.discarded``);
        a queued leave is done (the client is in no room any more)."""
        self._stats.discarded += self.queued
        for item in self._items:
            if item.waiter is not None and item.kind == LEAVE:
                item.waiter.succeed()
        self._items.clear()
        self.queued = 0
        self.settled_seq = self.enqueued_seq


class ReceiveBuffer:
    """Messages received for the app, in arrival order (see the module docstring)."""

    def __init__(self, size: int, policy: ReceiveOverflowPolicy, stats: ClientStats) -> None:
        self.size = size
        self.policy: ReceiveOverflowPolicy = policy
        self._stats = stats
        self._messages: deque[Message] = deque()
        self.closed = False

    def __len__(self) -> int:
        return len(self._messages)

    def __bool__(self) -> bool:
        return bool(self._messages)

    def put(self, message: Message) -> bool:
        """Buffer `message` (nothing once closed). True when the buffer is now full under the
        "reconnect" or "wait" policy (the reader then drops the connection, or waits for the
        app); "drop_oldest" discards the oldest unread message instead
        (``stats.receive_dropped``) and never reports full."""
        if self.closed:
            return False
        messages = self._messages
        if self.policy == "drop_oldest" and len(messages) >= self.size:
            messages.popleft()
            self._stats.receive_dropped += 1
        messages.append(message)
        return self.policy != "drop_oldest" and len(messages) >= self.size

    def pop(self) -> Message:
        """The oldest unread message (the buffer must not be empty)."""
        return self._messages.popleft()

    @property
    def room_mark(self) -> int:
        """How few unread messages let a waiting reader ("wait": one slot free) or a
        reconnect ("reconnect": half the buffer) go on."""
        return self.size - 1 if self.policy == "wait" else self.size // 2

    @property
    def behind(self) -> bool:
        """True while the app has more unread messages than `room_mark`."""
        return len(self._messages) > self.room_mark

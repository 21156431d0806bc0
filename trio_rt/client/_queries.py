"""`Query`: a one-shot request the app awaits for its reply (``presence``, ``presence_stats``).
Sans-IO: `ClientCore` renders it on the connection of the moment, matches the reply by its
`id` and type, and queues it again when the connection ends before the answer (a query reads,
so asking twice is harmless)."""

from __future__ import annotations

from typing import Final

from ._completion import Completion
from ._types import Message

__all__ = ["PRESENCE_REPLIES", "PRESENCE_STATS_REPLIES", "Query"]

PRESENCE_REPLIES: Final = frozenset({"presence", "error"})
PRESENCE_STATS_REPLIES: Final = frozenset({"presence_stats", "error"})


class Query:
    """A request (`message`, without its `id`) and its reply once it came: `done` succeeds
    with `reply` set, or fails with `ServerError` for an ``error`` reply (or the client's
    close)."""

    __slots__ = ("done", "message", "replies", "reply")

    def __init__(self, message: Message, replies: frozenset[str]) -> None:
        self.message = message
        self.replies = replies
        self.done = Completion()
        self.reply: Message | None = None

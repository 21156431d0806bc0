"""The chat demo that `trio-rt demo` runs: rooms and chat messages on the in-memory backends.

Clients connect to ``ws://HOST:PORT/?user=NAME``, join rooms with the built-in ``join_room``
message, and send::

    {"type": "chat_message", "payload": {"room": "chat:general", "message": "hi"}}

Every member of the room (the sender included) receives::

    {"type": "chat_message", "room": "chat:general",
     "data": {"user_id": "NAME", "message": "hi", "timestamp": "2026-11-26T08:00:00.000Z"},
     "position": {"offset": 7, "epoch": "1f2e3d4c"}}

``{"type": "presence", "room": ...}`` lists who is in a room (a member asks), and members
get ``presence_diff`` events when someone joins or leaves (docs/presence.md).

Rooms keep their last 1,000 messages in memory (`RoomHistory`): ``{"type": "history", "room":
...}`` pages through them, and a client that comes back with ``since`` gets what it missed.

Run it yourself with ``trio-rt serve trio_rt_examples.chat:build_app``. The web page at ``/``
(examples/web_ui.py) connects with a development token instead of ``?user=`` when the `auth`
extra is installed. The demo runs on the core install alone (no extras): the dev
tokens need the `auth` extra and the posts board the `cassandra` extra; the page says what is
off and how to turn it on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from trio_rt import (
    Connection,
    ErrorCode,
    PresenceService,
    ProtocolError,
    Reject,
    RoomHistory,
    WebSocketManager,
)

from .web_ui import NAME_RULE, USER_NAME, add_web_ui

MAX_CHAT_MESSAGE = 2000


def build_app(
    *,
    cassandra: str | None = None,
    keyspace: str = "trio_rt_demo",
    cdc_agent: str | None = None,
    tokens: bool | None = None,
    **options: Any,
) -> WebSocketManager:
    """Build the chat server; `options` are WebSocketManager options (host, port, ...).

    `cassandra` (``HOST:PORT``) adds the live posts board (examples/posts.py): a Cassandra
    table in `keyspace` whose changes every page receives; with `cdc_agent` (``HOST:PORT``
    of the node's CDC agent) rows other clients insert (cqlsh) too. It needs the `cassandra` extra:
    without it, ImportError saying what to install. `tokens` serves the page's dev tokens
    (default: when the `auth` extra is installed; False: the page connects with ``?user=``).
    """
    options.setdefault("history", RoomHistory())
    manager = WebSocketManager(**options)
    if cassandra is not None:
        from .posts import add_posts_board  # the `cassandra` extra: only with the board

        add_posts_board(manager, cassandra, keyspace, cdc_agent=cdc_agent)
    # --8<-- [start:presence]
    # Who is in each room (the page's "Here now" list), with join/leave events; one server:
    # the memory store (several servers share a RedisPresence instead; docs/presence.md).
    PresenceService(manager, events=True)
    # --8<-- [end:presence]
    # The page at /, and its dev tokens when the `auth` extra is installed (they authenticate
    # bearer tokens before the handler below).
    add_web_ui(manager, posts=cassandra is not None, tokens=tokens)

    @manager.on_connection
    async def identify(conn: Connection) -> None:
        if conn.user_id is not None:  # authenticated by the page's token
            return
        # A demo trusts the name it is given; real apps authenticate here (docs/security.md).
        name = conn.request.query.get("user", [""])[0]
        if name and not USER_NAME.fullmatch(name):
            raise Reject(400, f"a name is {NAME_RULE}")
        conn.user_id = name or f"guest-{conn.id[:6]}"

    @manager.on_message("chat_message")
    async def chat_message(conn: Connection, message: dict[str, Any]) -> None:
        payload = message.get("payload")
        if not isinstance(payload, dict):
            raise ProtocolError(ErrorCode.INVALID_FIELD, "'payload' must be an object")
        room, text = payload.get("room"), payload.get("message")
        if not isinstance(room, str) or not isinstance(text, str):
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, "'payload.room' and 'payload.message' must be strings"
            )
        if not text.strip():
            raise ProtocolError(ErrorCode.INVALID_FIELD, "'payload.message' is empty")
        if len(text) > MAX_CHAT_MESSAGE:
            raise ProtocolError(
                ErrorCode.TOO_LARGE, f"'payload.message' is over {MAX_CHAT_MESSAGE} characters"
            )
        if room not in conn.rooms:
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"join room {room!r} before writing to it")
        await manager.broadcast_to_room(
            room,
            {
                "type": "chat_message",
                "room": room,
                "data": {"user_id": conn.user_id, "message": text, "timestamp": _now()},
            },
        )

    return manager


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

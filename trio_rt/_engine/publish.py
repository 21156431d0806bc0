"""Publisher: acknowledged, idempotent publishes into rooms (the ``publish`` message, and
`publish` for the HTTP server API and the app's own handlers).

Attach it to a manager and clients may send
``{"type": "publish", "room": R, "data": D, "id": I}``; the members of R (the sender too,
when it is one) get ``{"type": "publication", "room": R, "data": D, "user_id": U,
"position": P}`` and the sender ``{"type": "ack", "room": R, "position": P, "id": I}``, or an
``error`` (docs/protocol.md, "Acknowledged publishes"):

- ``invalid_field`` (no id, no data, a bad room, an id used for another room within the
  window), ``not_permitted`` (the room rule, the `allow` hook, or not a member): refused,
  nothing stored; a resend gets the same answer;
- ``unavailable``: not done now; resend with the SAME id (with ``retry_after``). Either
  nothing was stored (the sequencer, the store or the idempotency store failed), or the
  message was stored but the broker did not confirm it ("refused but stored", docs/rooms.md):
  then the resend gets the ack of the stored message, and nothing more is stored or sent.

Idempotency: (user, id) (connection, id for anonymous connections, so an anonymous client is
deduplicated only on one connection) is claimed in the `IdempotencyStore` before anything is
stored; the first attempt stores and publishes, then records its outcome for `window`
seconds; a retry within the window gets the same ack and stores and delivers nothing. A retry
that finds the first attempt still running (it reconnected to another server while the first
one was storing) waits for its outcome up to `pending_wait` seconds, then answers
``unavailable``. A claim outlives an attempt by `pending_ttl` seconds at most (a server killed
mid-publish): then the id is free again. The rules and the seam are sans-IO
(`trio_rt._core.acks`); `MemoryIdempotencyStore` serves one process, `RedisIdempotencyStore`
several.

Cancellation: `publish` may be cancelled like any await; a claim it holds then expires after
`pending_ttl` (a cancelled attempt may have stored the message: the claim is not released).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from .._core.acks import (
    AckOutcome,
    AckResult,
    Done,
    IdempotencyStore,
    MemoryIdempotencyStore,
    idempotency_key,
    parse_publish,
)
from .._core.checks import number_problem, require
from .._core.errors import ErrorCode, ProtocolError, RequestId
from .._core.protocol import StreamPosition, error_message, reply
from .broker import BrokerUnavailable
from .connection import Connection

if TYPE_CHECKING:
    from .manager import WebSocketManager

__all__ = ["AllowPublish", "PublishRefused", "Publisher"]

log = logging.getLogger("trio_rt.publish")

AllowPublish = Callable[[Connection, str], Awaitable[bool]]
"""``async def allow(conn, room) -> bool``: may this connection publish into this room?"""


class PublishRefused(ProtocolError):
    """A publish was not done: `code` (``invalid_field``, ``not_permitted``, ``unavailable``),
    the `outcome` for the metrics, and `retry_after` (seconds) for ``unavailable``. A
    `ProtocolError`: raised in a message handler it becomes the sender's ``error`` reply."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        outcome: AckOutcome,
        *,
        retry_after: float | None = None,
        request_id: RequestId = None,
    ) -> None:
        super().__init__(code, message, request_id=request_id)
        self.outcome = outcome
        self.retry_after = retry_after


class Publisher:
    """Acknowledged publishes for one manager (see the module docstring)::

        publisher = Publisher(manager, idempotency=RedisIdempotencyStore(url))

    `idempotency` defaults to a `MemoryIdempotencyStore` (one process: give every server of
    a deployment the same `RedisIdempotencyStore`). `allow` is the app's permission hook,
    asked after the server's own rule (the room's ``broadcast`` permission, private rooms:
    `WebSocketManager.authorize`) and, with `require_membership` (the default), membership
    of the room. `message_type` is the client message type handled (``publish``; an app that
    already uses that type for its own handler picks another; None: no client message, only
    `publish` calls, as the HTTP server API makes). `acks` counts the outcomes.
    """

    def __init__(
        self,
        manager: WebSocketManager,
        *,
        idempotency: IdempotencyStore | None = None,
        window: float = 300.0,
        pending_ttl: float = 60.0,
        pending_wait: float = 10.0,
        allow: AllowPublish | None = None,
        require_membership: bool = True,
        message_type: str | None = "publish",
    ) -> None:
        require(
            number_problem("window", window),
            number_problem("pending_ttl", pending_ttl),
            number_problem("pending_wait", pending_wait, at_least=0),
        )
        self.manager = manager
        self.idempotency: IdempotencyStore = (
            idempotency if idempotency is not None else MemoryIdempotencyStore()
        )
        self.window = float(window)
        self.pending_ttl = float(pending_ttl)
        self.pending_wait = float(pending_wait)
        self.allow = allow
        self.require_membership = require_membership
        self.acks: dict[AckOutcome, int] = dict.fromkeys(AckOutcome, 0)
        # The dispatch checks the room field (a valid name the sender may `broadcast` to)
        # before `_on_publish` runs; the rate limits apply as to any message type.
        if message_type is not None:  # None: publishes from the server side only (HTTP API)
            manager.on_message(message_type, room_field="room")(self._on_publish)

    # -- the client message ---------------------------------------------------------------------
    async def _on_publish(self, conn: Connection, message: dict[str, Any]) -> None:
        request_id: RequestId = message.get("id")
        try:
            request = parse_publish(message, request_id)
            if self.require_membership and request.room not in self.manager.rooms_of(conn):
                raise ProtocolError(
                    ErrorCode.NOT_IN_ROOM,
                    f"join room {request.room!r} to publish to it",
                    request_id=request_id,
                )
            if self.allow is not None and not await self.allow(conn, request.room):
                raise ProtocolError(
                    ErrorCode.NOT_PERMITTED,
                    f"cannot publish to room {request.room!r}",
                    request_id=request_id,
                )
        except ProtocolError:
            self.acks[AckOutcome.REFUSED] += 1
            raise  # the dispatch answers it
        try:
            result = await self.publish(
                request.room,
                request.data,
                user_id=conn.user_id,
                key=idempotency_key(conn.user_id, conn.id, request.publish_id),
            )
        except PublishRefused as exc:
            extra: dict[str, Any] = {}
            if exc.retry_after is not None:
                extra["retry_after"] = exc.retry_after
            await conn.send(error_message(exc.code, exc.message, request_id=request_id, **extra))
            return
        await conn.send(reply("ack", request_id, **result.ack_fields()))

    # -- the publish itself (also the HTTP API's and the app's) --------------------------------
    async def publish(
        self, room: str, data: Any, *, user_id: str | None = None, key: str | None = None
    ) -> AckResult:
        """Store (a room with history) and publish ``{"type": "publication", "room", "data",
        "user_id"}`` to `room`'s members on every server; the ack's fields.

        With `key` (`trio_rt._core.acks.idempotency_key` / `api_idempotency_key`), a call with a key
        seen within the window returns the first call's result and stores and sends nothing.
        Raises `PublishRefused` (counted in `acks`); no permission is checked here (the
        caller's job)."""
        try:
            result, outcome = await self._publish(room, data, user_id, key)
        except PublishRefused as exc:
            self.acks[exc.outcome] += 1
            raise
        self.acks[outcome] += 1
        return result

    async def _publish(
        self, room: str, data: Any, user_id: str | None, key: str | None
    ) -> tuple[AckResult, AckOutcome]:
        token = uuid.uuid4().hex
        if key is not None:
            previous = await self._claim(key, token)
            if previous is not None:
                if previous.room != room:
                    raise PublishRefused(
                        ErrorCode.INVALID_FIELD,
                        f"this id was used for a message to room {previous.room!r}",
                        AckOutcome.REFUSED,
                    )
                return previous, AckOutcome.DUPLICATE
        message = {"type": "publication", "room": room, "data": data, "user_id": user_id}
        try:
            position = await self.manager.broadcast_to_room(room, message)
        except BrokerUnavailable as exc:
            stored = exc.stored_at
            if isinstance(stored, StreamPosition) and key is not None:
                # Stored, not confirmed: a resend must get this message's ack, not a copy.
                await self._complete(key, token, AckResult(room, stored))
            elif key is not None:
                await self._release(key, token)
            raise PublishRefused(
                ErrorCode.UNAVAILABLE,
                "the message was not confirmed by the broker; resend it with the same id",
                AckOutcome.UNCONFIRMED,
                retry_after=1.0,
            ) from exc
        except Exception as exc:
            if key is not None:
                await self._release(key, token)
            log.warning("publish to room %r failed: %r", room, exc)
            raise PublishRefused(
                ErrorCode.UNAVAILABLE,
                "the message could not be stored; resend it with the same id",
                AckOutcome.FAILED,
                retry_after=1.0,
            ) from exc
        result = AckResult(room, position)
        if key is not None:
            await self._complete(key, token, result)
        return result, AckOutcome.ACKED

    async def _claim(self, key: str, token: str) -> AckResult | None:
        """Claim `key` (None: ours), or the result of the attempt that has it, waiting up to
        `pending_wait` for an attempt in flight."""
        delay = 0.05
        with trio.move_on_after(self.pending_wait):
            while True:
                try:
                    record = await self.idempotency.claim(key, token, self.pending_ttl)
                except Exception as exc:
                    log.warning("idempotency store failed: %r; publish refused", exc)
                    raise PublishRefused(
                        ErrorCode.UNAVAILABLE,
                        "the message could not be stored; resend it with the same id",
                        AckOutcome.FAILED,
                        retry_after=1.0,
                    ) from exc
                if record is None:
                    return None
                if isinstance(record, Done):
                    return record.result
                # Another attempt of this id is storing it (a resend through another
                # server): its outcome is this one's.
                await trio.sleep(delay)
                delay = min(delay * 2, 0.5)
        raise PublishRefused(
            ErrorCode.UNAVAILABLE,
            "a publish with this id is in progress; resend it later with the same id",
            AckOutcome.IN_PROGRESS,
            retry_after=1.0,
        )

    async def _complete(self, key: str, token: str, result: AckResult) -> None:
        try:
            if not await self.idempotency.complete(key, token, result, self.window):
                log.warning("idempotency claim %s expired before its publish finished", key)
        except Exception as exc:
            # Stored and published: ack it. A resend before the claim expires waits for it,
            # one after may be stored again (the store's failure is logged).
            log.warning("idempotency store failed to record %s: %r", key, exc)

    async def _release(self, key: str, token: str) -> None:
        try:
            await self.idempotency.release(key, token)
        except Exception as exc:
            log.warning("idempotency store failed to release %s: %r", key, exc)

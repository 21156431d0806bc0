"""A trio_rt app for the acknowledged-publish tests: one of several server processes sharing
one Redis (broker, sequencer, idempotency records) and one ledger (a test-only `StreamStore`
on a Redis list: every stored room message, so a test counts what was stored).

Run:
``python -m trio_rt serve tests.integration.acks_server:build_app --host 127.0.0.1 --port 0``
with
``TRIO_RT_ACKS_REDIS_URL`` and ``TRIO_RT_ACKS_NAMESPACE`` (a fresh key prefix per test). With
``TRIO_RT_ACKS_HOLD=1`` the server stores and publishes each publish but never acks it (as if
it died right after): the test kills it and the client resends elsewhere.

Users: ``?user=<id>`` in the URL.
"""

from __future__ import annotations

import json
import os
from typing import Any

import trio

from trio_rt import Connection, RoomHistory, WebSocketManager
from trio_rt._core.acks import idempotency_key, parse_publish
from trio_rt._engine.publish import Publisher
from trio_rt._engine.streams import Allocation, StreamEntry, StreamPosition, StreamStore
from trio_rt.redis import RedisBroker, RedisIdempotencyStore, RedisSequencer
from trio_rt.redis._client import RedisClient

REDIS_URL_ENV = "TRIO_RT_ACKS_REDIS_URL"
NAMESPACE_ENV = "TRIO_RT_ACKS_NAMESPACE"
HOLD_ENV = "TRIO_RT_ACKS_HOLD"


class LedgerStore(StreamStore):
    """Room messages in a Redis list per stream (test-only: every read scans the list)."""

    def __init__(self, url: str, namespace: str) -> None:
        self._redis = RedisClient(url)
        self._namespace = namespace

    def key(self, stream: str) -> str:
        return f"{self._namespace}:ledger:{stream}"

    async def _all(self, stream: str) -> list[StreamEntry]:
        raw = await self._redis.execute("LRANGE", self.key(stream), 0, -1)
        entries = []
        for item in raw:
            e = json.loads(item)
            position = StreamPosition(e["offset"], e["epoch"])
            entries.append(StreamEntry(position, e["ts"], e["payload"]))
        return sorted(entries, key=lambda e: e.position.offset)

    async def append(self, stream: str, allocation: Allocation, payload: str) -> None:
        p = allocation.position
        entry = {"offset": p.offset, "epoch": p.epoch, "ts": allocation.timestamp}
        await self._redis.execute(
            "RPUSH", self.key(stream), json.dumps({**entry, "payload": payload})
        )

    async def read(
        self, stream: str, epoch: str, after: int, limit: int, *, upto: int | None = None
    ) -> list[StreamEntry]:
        entries = await self._all(stream)
        return [e for e in entries if e.position.epoch == epoch and e.position.offset > after][
            :limit
        ]

    async def latest(
        self, stream: str, epoch: str, limit: int, before: int | None = None
    ) -> list[StreamEntry]:
        entries = [
            e
            for e in await self._all(stream)
            if e.position.epoch == epoch and (before is None or e.position.offset < before)
        ]
        return entries[-limit:] if limit > 0 else []

    async def contains(self, stream: str, position: StreamPosition) -> bool:
        return any(e.position == position for e in await self._all(stream))

    async def head(self, stream: str) -> Allocation | None:
        entries = await self._all(stream)
        if not entries:
            return None
        return Allocation(entries[-1].position, entries[-1].timestamp)


class HoldingPublisher(Publisher):
    """Stores and publishes, then holds the ack forever (the server is killed meanwhile)."""

    async def _on_publish(self, conn: Connection, message: dict[str, Any]) -> None:
        request = parse_publish(message, message.get("id"))
        await self.publish(
            request.room,
            request.data,
            user_id=conn.user_id,
            key=idempotency_key(conn.user_id, conn.id, request.publish_id),
        )
        await trio.sleep_forever()


def build_app(**options: Any) -> WebSocketManager:
    """The factory for ``python -m trio_rt serve``; the settings come from the environment."""
    url = os.environ[REDIS_URL_ENV]
    namespace = os.environ[NAMESPACE_ENV]
    options.setdefault("heartbeat_interval", None)
    history = RoomHistory(LedgerStore(url, namespace), RedisSequencer(url, namespace=namespace))
    manager = WebSocketManager(
        broker=RedisBroker(url), history=history, channel_prefix=namespace, **options
    )

    @manager.on_connection
    async def identify(conn: Connection) -> None:
        users = conn.request.query.get("user")
        if users:
            conn.user_id = users[0]

    idempotency = RedisIdempotencyStore(url, prefix=f"{namespace}:idem:")
    factory = HoldingPublisher if os.environ.get(HOLD_ENV) == "1" else Publisher
    factory(manager, idempotency=idempotency)
    return manager

"""A publish retried through a reconnect to ANOTHER server process is stored and delivered
exactly once (issue 18): two ``python -m trio_rt serve tests.integration.acks_server:build_app``
processes on one real Redis (broker, sequencer, idempotency records, and a ledger of stored
room messages). The first server stores and publishes the message, then is killed before its
ack; the client reconnects to the second, resends the same id, and gets the SAME ack.

No assertion depends on timing: ``fail_after`` only guards against deadlocks.
"""

from __future__ import annotations

import collections
import contextlib
import json
import uuid

import trio

from tests.integration.acks_server import HOLD_ENV, NAMESPACE_ENV, REDIS_URL_ENV
from tests.integration.test_scale_out import GUARD, ServerProcess, serve_apps, wait_until
from trio_rt.client import ClientClosed, WebSocketClient
from trio_rt.redis._client import RedisClient

ROOM = "acks"


def servers(
    redis_url: str, namespace: str, holds: list[bool]
) -> contextlib.AbstractAsyncContextManager[list[ServerProcess]]:
    """One server per entry of `holds` (True: it never acks); all stopped on the way out."""
    envs = [
        {REDIS_URL_ENV: redis_url, NAMESPACE_ENV: namespace, HOLD_ENV: "1" if hold else "0"}
        for hold in holds
    ]
    return serve_apps("tests.integration.acks_server:build_app", envs)


async def test_a_resend_through_another_server_is_stored_and_delivered_once(
    redis_url: str,
) -> None:
    namespace = f"test-acks-{uuid.uuid4().hex[:12]}"
    async with servers(redis_url, namespace, holds=[True, False]) as (s1, s2):
        received: collections.Counter[str] = collections.Counter()
        positions: dict[str, dict[str, object]] = {}
        watcher = WebSocketClient(s2.url + "?user=watch", ping_interval=None, compression=False)
        ann = WebSocketClient(
            [s1.url + "?user=ann", s2.url + "?user=ann"],
            url_index=0,
            initial_delay=0.05,
            max_delay=0.5,
            ping_interval=None,
            compression=False,
        )
        acks: dict[str, dict[str, object]] = {}

        async def watch() -> None:
            with contextlib.suppress(ClientClosed):
                async for message in watcher:
                    if message["type"] == "publication":
                        received[message["data"]] += 1
                        positions[message["data"]] = message["position"]

        async def publish(text: str, publish_id: str) -> None:
            acks[text] = await ann.publish(ROOM, text, id=publish_id)

        with trio.fail_after(GUARD):
            async with watcher, ann, trio.open_nursery() as nursery:
                await watcher.join_room(ROOM)
                nursery.start_soon(watch)
                await ann.join_room(ROOM)
                first_server = ann.welcome["server_id"]  # type: ignore[index]
                nursery.start_soon(publish, "hello", "m-1")
                # Stored and published by the first server (the watcher, on the second, got
                # it through Redis); its ack never comes: kill it.
                await wait_until(lambda: received["hello"] == 1)
                s1.proc.kill()
                await wait_until(lambda: "hello" in acks)
                assert ann.welcome["server_id"] != first_server  # type: ignore[index]
                assert acks["hello"]["position"] == positions["hello"]  # the SAME ack
                assert ann.stats.resent == 1
                # A fence through the same room: a copy of "hello" would come before it.
                await publish("fence", "m-2")
                await wait_until(lambda: received["fence"] == 1)
                nursery.cancel_scope.cancel()
        assert received == {"hello": 1, "fence": 1}
        async with RedisClient(redis_url) as redis:
            ledger = await redis.execute("LRANGE", f"{namespace}:ledger:room:{ROOM}", 0, -1)
            stored = [json.loads(json.loads(e)["payload"])["data"] for e in ledger]
            assert stored == ["hello", "fence"]  # exactly one stored copy
            await redis.execute("DEL", f"{namespace}:ledger:room:{ROOM}")

"""The `IdempotencyStore` contract (trio_rt._core.acks), run against every implementation:
`MemoryIdempotencyStore` and `RedisIdempotencyStore` on a real Redis (a fresh key prefix per
test). Expiry is observed by polling with a deadlock guard, never by timing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import trio

from trio_rt._core.acks import (
    AckResult,
    Done,
    IdempotencyStore,
    MemoryIdempotencyStore,
    Pending,
    decode_record,
    encode_record,
)
from trio_rt._core.protocol import StreamPosition
from trio_rt.redis import RedisIdempotencyStore


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[IdempotencyStore]:
    if request.param == "memory":
        yield MemoryIdempotencyStore()
        return
    redis_url: str = request.getfixturevalue("redis_url")
    redis = RedisIdempotencyStore(redis_url, prefix=f"test:{uuid.uuid4().hex}:idem:")
    try:
        yield redis
    finally:
        await redis.aclose()


RESULT = AckResult("r", StreamPosition(7, "e1"))


async def test_the_first_claim_owns_the_key_and_later_claims_see_it(
    store: IdempotencyStore,
) -> None:
    assert await store.claim("k", "t1", 60) is None
    assert await store.claim("k", "t2", 60) == Pending("t1")
    assert await store.claim("other", "t2", 60) is None  # keys are independent


async def test_complete_replaces_the_claim_with_the_result_for_every_retry(
    store: IdempotencyStore,
) -> None:
    assert await store.claim("k", "t1", 60) is None
    assert await store.complete("k", "t1", RESULT, 60) is True
    for token in ("t2", "t3"):
        assert await store.claim("k", token, 60) == Done(RESULT)
    no_position = AckResult("plain", None)
    assert await store.claim("k2", "t1", 60) is None
    assert await store.complete("k2", "t1", no_position, 60) is True
    assert await store.claim("k2", "t9", 60) == Done(no_position)


async def test_only_the_owner_completes_or_releases(store: IdempotencyStore) -> None:
    assert await store.claim("k", "t1", 60) is None
    assert await store.complete("k", "intruder", RESULT, 60) is False
    await store.release("k", "intruder")
    assert await store.claim("k", "t2", 60) == Pending("t1")  # untouched
    assert await store.complete("missing", "t1", RESULT, 60) is False  # nothing claimed
    await store.release("k", "t1")
    assert await store.claim("k", "t2", 60) is None  # free again: a first attempt
    assert await store.complete("k", "t2", RESULT, 60) is True
    await store.release("k", "t2")  # a completed record is not released
    assert await store.claim("k", "t3", 60) == Done(RESULT)
    assert await store.complete("k", "t2", AckResult("x", None), 60) is False


async def _until_free(store: IdempotencyStore, key: str) -> None:
    with trio.fail_after(10):  # deadlock guard only
        while await store.claim(key, "later", 60) is not None:  # noqa: ASYNC110 - a TTL has no event
            await trio.sleep(0.02)


async def test_claims_and_results_expire(store: IdempotencyStore) -> None:
    assert await store.claim("pending", "t1", 0.05) is None
    await _until_free(store, "pending")  # a dead attempt's claim frees the id
    assert await store.claim("done", "t1", 60) is None
    assert await store.complete("done", "t1", RESULT, 0.05) is True
    await _until_free(store, "done")  # the window is over


def test_records_round_trip_and_garbage_is_refused() -> None:
    for record in (Pending("abc"), Done(RESULT), Done(AckResult("r", None))):
        assert decode_record(encode_record(record)) == record
    for text in ("", "x:1", "d:[]", "d:{}", 'd:{"room":"r","position":{"offset":-1}}'):
        with pytest.raises(ValueError):
            decode_record(text)


def test_memory_store_prunes_expired_records() -> None:
    now = [0.0]
    store = MemoryIdempotencyStore(clock=lambda: now[0], prune_every=3)

    async def fill() -> None:
        for i in range(2):
            assert await store.claim(f"k{i}", "t", 1.0) is None
        now[0] = 5.0
        assert await store.claim("fresh", "t", 1.0) is None  # the third call prunes

    trio.run(fill)
    assert len(store) == 1

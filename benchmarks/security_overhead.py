"""What the security checks cost: rate-limit arithmetic, a client's messages through the server
with each limiter, and permission checks against Cassandra.

    python -m benchmarks.security_overhead [--messages 5000] [--runs 3] [--redis URL]
        [--cassandra HOST:PORT]

In-process (server and client in one Trio run), so absolute rates are lower than across
processes; the ratios between modes, measured alternately in the same run, are the point.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import timeit
from typing import Any

import trio
from websockets.trio.client import connect

from trio_rt import LocalRateLimiter, Rate, WebSocketManager


def micro() -> dict[str, float]:
    limiter = LocalRateLimiter()
    rate = Rate(10**9, 60)
    keys = [f"u:{i}" for i in range(1000)]
    n = 200_000
    t = timeit.timeit(lambda: limiter.hit_now(keys[n % 1000], rate), number=n)
    return {"local_hit_us": t / n * 1e6}


async def pings_per_second(messages: int, **manager_kwargs: Any) -> float:
    manager = WebSocketManager(
        host="127.0.0.1", port=0, heartbeat_interval=None, compression=False, **manager_kwargs
    )
    async with manager, connect(manager.url, compression=None, ping_interval=None) as ws:
        await ws.recv()  # welcome
        frame = json.dumps({"type": "ping"})
        started = time.perf_counter()

        async def send_all() -> None:
            for _ in range(messages):
                await ws.send(frame)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_all)
            for _ in range(messages):
                await ws.recv()
        return messages / (time.perf_counter() - started)


async def dispatch(messages: int, runs: int, redis_url: str | None) -> dict[str, Any]:
    modes: dict[str, dict[str, Any]] = {
        "no_limit": {"rate_limit": None},
        "local_limiter": {"rate_limit": 10**9},
    }
    if redis_url:
        from trio_rt import RedisRateLimiter

        modes["redis_limiter"] = {"rate_limit": 10**9, "redis": redis_url}
    results: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(runs):
        for mode, kwargs in modes.items():
            kwargs = dict(kwargs)
            url = kwargs.pop("redis", None)
            if url:
                kwargs["rate_limiter"] = RedisRateLimiter(url, prefix="bench:rl:")
            results[mode].append(await pings_per_second(messages, **kwargs))
    medians = {m: statistics.median(v) for m, v in results.items()}
    return {"msgs_per_s": medians, "runs": results}


async def permissions(endpoint: str, n: int = 500) -> dict[str, float]:
    from trio_rt import CassandraPermissionStore
    from trio_rt.cassandra import CassandraSession

    host, _, port = endpoint.rpartition(":")
    async with CassandraSession.connect([host], port=int(port)) as session:
        await session.create_keyspace("bench_perm")
        try:
            cold = CassandraPermissionStore(session, "bench_perm", cache_ttl=0)
            warm = CassandraPermissionStore(session, "bench_perm", cache_ttl=60)
            await cold.create_table()
            await cold.grant("ann", "room:a", "join")
            out: dict[str, float] = {}
            for name, store in (("cassandra_uncached_ms", cold), ("cassandra_cached_ms", warm)):
                started = time.perf_counter()
                for _ in range(n):
                    assert await store.has_permission("ann", "room:a", "join")
                out[name] = (time.perf_counter() - started) / n * 1000
            return out
        finally:
            await session.drop_keyspace("bench_perm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--redis", default=None)
    parser.add_argument("--cassandra", default=None, help="host:port")
    args = parser.parse_args()
    out: dict[str, Any] = {"micro": micro()}
    out["dispatch"] = trio.run(dispatch, args.messages, args.runs, args.redis)
    if args.cassandra:
        out["permissions"] = trio.run(permissions, args.cassandra)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

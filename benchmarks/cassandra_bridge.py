"""Rough numbers for docs/cassandra.md: ``python -m benchmarks.cassandra_bridge HOST:PORT``.

Prepared INSERTs of one small row against a running node (``TRIO_RT_CASSANDRA``, or
``python -m trio_rt.testing.services up --cassandra`` starts one), N requests in flight:

* ``many``: :meth:`CassandraSession.execute_many` -- one Trio task keeps N requests out;
* ``tasks``: N Trio tasks, each awaiting :meth:`CassandraSession.execute` in a loop;
* ``raw``: the driver alone, no Trio: N chains of ``execute_async`` + ``add_callbacks`` where
  each callback sends the chain's next request from the IO thread (the driver's fastest
  pattern: the ceiling for any bridge);
* ``thread`` (N <= 16 only): N plain threads calling the blocking ``Session.execute`` (like
  the bridge, two cross-thread hops per request).

The modes alternate within each round; medians over ``--rounds`` are printed. CPU is process
time (all threads of this process; the server is another process) per request.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import trio

from trio_rt.cassandra import CassandraSession

_TABLE = "CREATE TABLE IF NOT EXISTS {ks}.bench (id int PRIMARY KEY, v text)"
_INSERT = "INSERT INTO {ks}.bench (id, v) VALUES (?, ?)"

Result = tuple[float, float]  # (requests per second, CPU microseconds per request)


def _measure(n: int, run: Callable[[], None]) -> Result:
    start_cpu, start = time.process_time(), time.perf_counter()
    run()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return n / elapsed, cpu / n * 1e6


async def _ameasure(n: int, run: Callable[[], Any]) -> Result:
    start_cpu, start = time.process_time(), time.perf_counter()
    await run()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return n / elapsed, cpu / n * 1e6


async def _many(session: CassandraSession, insert: str, total: int, n: int) -> Result:
    params = ((i, "payload") for i in range(total))
    return await _ameasure(total, lambda: session.execute_many(insert, params, concurrency=n))


async def _tasks(session: CassandraSession, insert: str, total: int, n: int) -> Result:
    per_task = total // n

    async def worker(base: int) -> None:
        for i in range(per_task):
            await session.execute(insert, (base + i, "payload"))

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            for t in range(n):
                nursery.start_soon(worker, t * per_task)

    return await _ameasure(per_task * n, run)


def _raw(driver: Any, insert: str, total: int, n: int) -> Result:
    prepared = driver.prepare(insert)
    per_chain = total // n
    done = threading.Event()
    lock = threading.Lock()
    remaining = [n]

    def step(chain: int, i: int) -> None:
        if i == per_chain:
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set()
            return
        future = driver.execute_async(prepared, (chain * per_chain + i, "payload"))
        future.add_callbacks(lambda _rows: step(chain, i + 1), lambda exc: print("error", exc))

    def run() -> None:
        for chain in range(n):
            step(chain, 0)
        done.wait()

    return _measure(per_chain * n, run)


def _threads(driver: Any, insert: str, total: int, n: int) -> Result:
    prepared = driver.prepare(insert)
    per_thread = total // n

    def loop(base: int) -> None:
        for i in range(per_thread):
            driver.execute(prepared, (base + i, "payload"))

    def run() -> None:
        threads = [threading.Thread(target=loop, args=(t * per_thread,)) for t in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    return _measure(per_thread * n, run)


async def _main(
    host: str, port: int, total: int, rounds: int, levels: list[int], protocol: int
) -> None:
    ks = "bench_" + uuid.uuid4().hex[:8]
    async with CassandraSession.connect([host], port=port, protocol_version=protocol) as session:
        await session.create_keyspace(ks)
        await session.execute(_TABLE.format(ks=ks))
        insert = _INSERT.format(ks=ks)
        await session.execute(insert, (0, "warm-up"))
        driver = session.driver_session
        try:
            for n in levels:
                results: dict[str, list[Result]] = {}
                for _ in range(rounds):
                    results.setdefault("many", []).append(await _many(session, insert, total, n))
                    results.setdefault("tasks", []).append(await _tasks(session, insert, total, n))
                    results.setdefault("raw", []).append(
                        await trio.to_thread.run_sync(_raw, driver, insert, total, n)
                    )
                    if n <= 16:
                        results.setdefault("thread", []).append(
                            await trio.to_thread.run_sync(_threads, driver, insert, total, n)
                        )
                for mode, runs in results.items():
                    rate = statistics.median(r[0] for r in runs)
                    cpu = statistics.median(r[1] for r in runs)
                    each = ", ".join(f"{r[0]:.0f}" for r in runs)
                    print(
                        f"N={n:<4d} {mode:6s} median {rate:7.0f} req/s ({each})  "
                        f"{cpu:6.1f} us CPU/req  {1e6 / rate * n:8.0f} us per request"
                    )
        finally:
            await session.drop_keyspace(ks)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("endpoint", help="HOST:PORT of a Cassandra node")
    parser.add_argument("--requests", type=int, default=10_000, help="per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", default="1,16,64,256", help="requests in flight")
    parser.add_argument("--protocol", type=int, default=5, help="native protocol version")
    args = parser.parse_args()
    host, _, port = args.endpoint.rpartition(":")
    levels = [int(x) for x in args.levels.split(",")]
    print(f"protocol v{args.protocol}, {args.requests} prepared INSERTs per run", flush=True)
    trio.run(_main, host, int(port), args.requests, args.rounds, levels, args.protocol)


if __name__ == "__main__":
    main()

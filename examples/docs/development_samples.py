"""The sample of docs/development.md ("From Python"), run by tests/integration/test_doc_samples.py.

Each function starts one kind of service, hands it to `use` and stops it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# --8<-- [start:imports]
from trio_rt.testing.services import CassandraServer, RedisCluster, RedisServer

# --8<-- [end:imports]

Use = Callable[[Any], None]


def with_redis(use: Use) -> None:
    # --8<-- [start:redis]
    with RedisServer.start() as redis:  # .url, .host, .port, .pid, .stop()
        use(redis)
    # --8<-- [end:redis]


def with_redis_cluster(use: Use) -> None:
    # --8<-- [start:cluster]
    with RedisCluster.start() as cluster:  # .addresses -> ["127.0.0.1:P", ...]
        use(cluster)
    # --8<-- [end:cluster]


def with_cassandra(use: Use) -> None:
    # --8<-- [start:cassandra]
    with CassandraServer.start() as cass:  # .host, .port, .endpoint, .rss_kib(), .stop()
        use(cass)
    # --8<-- [end:cassandra]

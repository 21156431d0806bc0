"""pytest fixtures giving tests a real Redis, Redis Cluster and Cassandra.

Enable with ``pytest_plugins = ["trio_rt.testing.pytest_plugin"]`` (top-level conftest).

Each fixture is session-scoped.  If its environment variable is set, the fixture uses that
server (after checking that it answers); otherwise it starts one with
:mod:`trio_rt.testing.services` on the first request and stops it when the session ends:

* ``redis_url`` (str, ``redis://127.0.0.1:PORT/0``) -- ``TRIO_RT_REDIS_URL``
* ``redis_cluster_nodes`` (list of ``"host:port"``) -- ``TRIO_RT_REDIS_CLUSTER``
  (comma-separated)
* ``cassandra_endpoint`` (:class:`CassandraEndpoint` with ``host``/``port``) --
  ``TRIO_RT_CASSANDRA`` (``host:port``)

A service that cannot be started or reached makes the fixture *fail* (with the tail of the
server's log), never skip.  The outcome is cached for the session, so a broken Cassandra
costs one start attempt, not one per test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from trio_rt.testing.services import (
    CassandraEndpoint,
    CassandraServer,
    RedisCluster,
    RedisServer,
    ServiceError,
    cassandra_release_version,
    parse_cassandra_endpoint,
    parse_redis_url,
    redis_ping,
)

__all__ = [
    "CassandraEndpoint",
    "cassandra_endpoint",
    "redis_cluster_nodes",
    "redis_url",
]


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis server (``$TRIO_RT_REDIS_URL`` or one started for this session)."""
    url = _env("TRIO_RT_REDIS_URL")
    if url is not None:
        host, port = parse_redis_url(url)
        if not redis_ping(host, port):
            pytest.fail(f"TRIO_RT_REDIS_URL={url} does not answer PING", pytrace=False)
        yield url
        return
    try:
        server = RedisServer.start(die_with_parent=True)
    except ServiceError as exc:
        pytest.fail(f"could not start redis-server for the tests:\n{exc}", pytrace=False)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster_nodes() -> Iterator[list[str]]:
    """``["host:port", ...]`` of a 3-master Redis Cluster (``$TRIO_RT_REDIS_CLUSTER`` or own)."""
    env = _env("TRIO_RT_REDIS_CLUSTER")
    if env is not None:
        nodes = [n.strip() for n in env.split(",") if n.strip()]
        for node in nodes:
            host, _, port = node.rpartition(":")
            if not redis_ping(host, int(port)):
                pytest.fail(
                    f"TRIO_RT_REDIS_CLUSTER node {node} does not answer PING", pytrace=False
                )
        yield nodes
        return
    try:
        cluster = RedisCluster.start(die_with_parent=True)
    except ServiceError as exc:
        pytest.fail(f"could not start a Redis Cluster for the tests:\n{exc}", pytrace=False)
    try:
        yield cluster.addresses
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def cassandra_endpoint() -> Iterator[CassandraEndpoint]:
    """Host and CQL port of a real Cassandra 5.0 node (``$TRIO_RT_CASSANDRA`` or own)."""
    env = _env("TRIO_RT_CASSANDRA")
    if env is not None:
        endpoint = parse_cassandra_endpoint(env)
        try:
            cassandra_release_version(endpoint.host, endpoint.port)
        except (OSError, ServiceError) as exc:
            pytest.fail(
                f"TRIO_RT_CASSANDRA={env} does not answer a CQL query: {exc}", pytrace=False
            )
        yield endpoint
        return
    try:
        server = CassandraServer.start(die_with_parent=True)
    except ServiceError as exc:
        pytest.fail(f"could not start Cassandra for the tests:\n{exc}", pytrace=False)
    try:
        yield server.endpoint
    finally:
        server.stop()

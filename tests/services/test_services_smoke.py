"""Smoke tests: the launcher gives real Redis, Redis Cluster and Cassandra 5.0 servers."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import redis
import redis.cluster
from cassandra.cluster import Cluster

from trio_rt.testing.services import (
    CassandraEndpoint,
    cassandra_release_version,
    parse_redis_url,
    redis_ping,
)

# Fixtures come from trio_rt.testing.pytest_plugin, enabled in tests/conftest.py.


def test_redis_ping_set_get(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
        key = f"trio_rt:smoke:{uuid.uuid4()}"
        assert client.set(key, b"hello", ex=60) is True
        assert client.get(key) == b"hello"
        info = client.info("persistence")
        assert info["aof_enabled"] == 0
    finally:
        client.close()


def test_redis_cluster_sharded_keys(redis_cluster_nodes: list[str]) -> None:
    assert len(redis_cluster_nodes) == 3
    host, _, port = redis_cluster_nodes[0].rpartition(":")
    client = redis.cluster.RedisCluster(host=host, port=int(port))
    try:
        info = client.cluster_info()
        assert info["cluster_state"] == "ok"
        assert int(info["cluster_known_nodes"]) == 3
        # keys spread over several slots (and so several masters) all round-trip
        for i in range(20):
            client.set(f"trio_rt:smoke:{i}", str(i))
        assert [client.get(f"trio_rt:smoke:{i}") for i in range(20)] == [
            str(i).encode() for i in range(20)
        ]
    finally:
        client.close()


def test_cassandra_release_version(cassandra_endpoint: CassandraEndpoint) -> None:
    cluster = Cluster([cassandra_endpoint.host], port=cassandra_endpoint.port)
    try:
        session = cluster.connect()
        row = session.execute("SELECT release_version FROM system.local").one()
        assert row.release_version.startswith("5.0."), row.release_version
        # a real write/read round trip as well
        session.execute(
            "CREATE KEYSPACE IF NOT EXISTS trio_rt_smoke WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        session.execute("CREATE TABLE IF NOT EXISTS trio_rt_smoke.kv (k text PRIMARY KEY, v int)")
        session.execute("INSERT INTO trio_rt_smoke.kv (k, v) VALUES (%s, %s)", ("a", 1))
        got = session.execute("SELECT v FROM trio_rt_smoke.kv WHERE k = %s", ("a",)).one()
        assert got.v == 1
    finally:
        cluster.shutdown()


def test_stdlib_probes(redis_url: str, cassandra_endpoint: CassandraEndpoint) -> None:
    # the launcher's own dependency-free readiness checks agree with the real clients
    assert redis_ping(*parse_redis_url(redis_url))
    version = cassandra_release_version(cassandra_endpoint.host, cassandra_endpoint.port)
    assert version.startswith("5.0.")


def test_cli_up_status_down(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "trio_rt.testing.services", "--state-dir", str(tmp_path), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    up = cli("up", "--redis")
    assert up.returncode == 0, up.stderr
    (line,) = up.stdout.splitlines()
    assert line.startswith("export TRIO_RT_REDIS_URL=redis://127.0.0.1:")
    url = line.split("=", 1)[1]
    record = json.loads((tmp_path / "services.json").read_text())["services"]["redis"]
    try:
        assert redis_ping(*parse_redis_url(url))
        again = cli("up", "--redis")  # reuses the running server
        assert again.returncode == 0, again.stderr
        assert again.stdout == up.stdout
        status = cli("status")
        assert status.returncode == 0, status.stdout
        assert " up " in status.stdout
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr
    assert not (tmp_path / "services.json").exists()
    assert not redis_ping(*parse_redis_url(url))
    assert not Path(f"/proc/{record['pid']}").exists() or "Z" in _proc_state(record["pid"])


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"

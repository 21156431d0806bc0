"""A local Redis Cluster: N :class:`RedisServer` nodes in cluster mode, joined by ``redis-cli``."""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import subprocess
from pathlib import Path
from typing import Any, ClassVar, Self

from ._base import Service, ServiceError, log, poll_until, service_error
from ._install import require_binary
from ._redis import RedisServer, redis_command


@dataclasses.dataclass
class RedisCluster(Service):
    """A local Redis Cluster: N masters, no replicas, created with ``redis-cli --cluster``."""

    kind: ClassVar[str] = "redis_cluster"
    env_var: ClassVar[str] = "TRIO_RT_REDIS_CLUSTER"

    nodes: list[RedisServer]

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    @property
    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes]

    @classmethod
    def start(
        cls,
        state_dir: Path | str | None = None,
        *,
        masters: int = 3,
        die_with_parent: bool = False,
        timeout: float = 60.0,
    ) -> Self:
        """Start ``masters`` nodes, join them, return once every node says ``cluster_state:ok``.

        On any failure every node started so far is stopped (its directory kept).
        """
        cli = require_binary("redis-cli", "redis-tools")
        nodes: list[RedisServer] = []
        try:
            for _ in range(masters):
                nodes.append(
                    RedisServer.start(state_dir, cluster=True, die_with_parent=die_with_parent)
                )
            cluster = cls(nodes)
            argv = [cli, "--cluster", "create", *cluster.addresses]
            argv += ["--cluster-replicas", "0", "--cluster-yes"]
            res = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            if res.returncode != 0:
                raise service_error(
                    f"`{shlex.join(argv)}` failed (exit {res.returncode}):\n"
                    f"{res.stdout}\n{res.stderr}",
                    nodes[0].process.log_path,
                    20,
                )
            cluster._wait_ok(timeout)
        except BaseException:
            for node in nodes:
                with contextlib.suppress(Exception):
                    node.stop(remove_dir=False)
            raise
        log.info("redis cluster ready: %s", ", ".join(cluster.addresses))
        return cluster

    def _wait_ok(self, timeout: float) -> None:
        """Wait (one deadline for all nodes) until each node reports ``cluster_state:ok``."""
        pending = list(self.nodes)
        info: object = None

        def all_ok() -> bool:
            nonlocal info
            while pending:
                node = pending[0]
                try:
                    info = redis_command(node.host, node.port, "CLUSTER", "INFO")
                except (OSError, ServiceError):
                    info = None
                if not (isinstance(info, bytes) and b"cluster_state:ok" in info):
                    return False
                pending.pop(0)
            return True

        poll_until(
            all_ok,
            timeout=timeout,
            interval=0.1,
            late=lambda: service_error(
                f"redis cluster node {pending[0].address} not in cluster_state:ok after "
                f"{timeout:.0f} s (CLUSTER INFO: {info!r})",
                pending[0].process.log_path,
                20,
            ),
        )

    def alive(self) -> bool:
        return all(n.alive() for n in self.nodes)

    def ping(self) -> bool:
        return all(n.ping() for n in self.nodes)

    def stop(self, *, remove_dir: bool = True) -> None:
        """Stop every node (even when one fails to stop); then raise the first error."""
        errors: list[Exception] = []
        for node in self.nodes:
            try:
                node.stop(remove_dir=remove_dir)
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def env_value(self) -> str:
        return ",".join(self.addresses)

    def to_record(self) -> dict[str, Any]:
        return {"nodes": [n.to_record() for n in self.nodes]}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Self:
        return cls([RedisServer.from_record(n) for n in rec["nodes"]])

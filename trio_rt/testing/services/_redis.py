"""One Redis server (Debian's ``redis-server``) and a tiny stdlib RESP client to probe it."""

from __future__ import annotations

import dataclasses
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, ClassVar, Self

from ._base import (
    HOST,
    Process,
    Service,
    ServiceError,
    default_state_dir,
    free_ports,
    log,
    parse_host_port,
    remove_service_dir,
    spawn,
    start_retrying,
)
from ._install import require_binary

REDIS_START_TIMEOUT = 20.0
# A redis-server that fails to start did so within this grace (no data to flush).
_FAILED_START_STOP_TIMEOUT = 5.0
_MARKER = b"redis-server"

RespValue = str | int | bytes | None | list["RespValue"]


class RedisReplyError(ServiceError):
    """Redis answered with an error reply."""


def _read_resp(f: IO[bytes]) -> RespValue:
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed by redis")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisReplyError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        if len(data) != n + 2:
            raise ConnectionError("connection closed by redis")
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_resp(f) for _ in range(n)]
    raise ConnectionError(f"unexpected reply from redis: {line[:80]!r}")


def redis_command(host: str, port: int, *args: str, timeout: float = 3.0) -> RespValue:
    """Send one command over a fresh connection (tiny stdlib RESP client).

    Raises OSError when Redis cannot be reached, :class:`RedisReplyError` on an error reply.
    """
    payload = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        payload.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"".join(payload))
        with sock.makefile("rb") as f:
            return _read_resp(f)


def redis_ping(host: str, port: int, timeout: float = 2.0) -> bool:
    """True if Redis at host:port answers PING with PONG (never raises)."""
    try:
        return redis_command(host, port, "PING", timeout=timeout) == "PONG"
    except (OSError, ServiceError, ValueError):
        return False


def parse_redis_url(url: str) -> tuple[str, int]:
    """``redis://host:port/db`` -> (host, port) (no auth/TLS handling: test servers only)."""
    rest = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    return parse_host_port(rest, 6379)


@dataclasses.dataclass
class RedisServer(Service):
    """One ``redis-server`` child on 127.0.0.1, no persistence, own dir under the state dir."""

    kind: ClassVar[str] = "redis"
    env_var: ClassVar[str] = "TRIO_RT_REDIS_URL"

    host: str
    port: int
    dir: Path
    process: Process

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def pids(self) -> list[int]:
        return [self.pid]

    @classmethod
    def start(
        cls,
        state_dir: Path | str | None = None,
        *,
        cluster: bool = False,
        die_with_parent: bool = False,
        timeout: float = REDIS_START_TIMEOUT,
        extra_args: Sequence[str] = (),
    ) -> Self:
        """Start ``redis-server`` on a free port; return once PING answers.

        ``cluster`` enables cluster mode (the bus port, ``port + 10000``, is checked free
        too); ``extra_args`` are appended to the command line.
        """
        binary = require_binary("redis-server", "redis-server")
        root = Path(state_dir) if state_dir is not None else default_state_dir()
        root.mkdir(parents=True, exist_ok=True)

        def attempt() -> tuple[int, Path, Process]:
            (port,) = free_ports(1, bus_offset=10000 if cluster else None)
            prefix = "redis-cluster-node-" if cluster else "redis-"
            sdir = Path(tempfile.mkdtemp(prefix=f"{prefix}{port}-", dir=root))
            log_path = sdir / "redis.log"
            argv = [
                binary,
                "--port", str(port),
                "--bind", HOST,
                "--protected-mode", "yes",
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--dir", str(sdir),
                "--logfile", "",
                "--loglevel", "notice",
            ]  # fmt: skip
            if cluster:
                argv += [
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "5000",
                ]  # fmt: skip
            argv += list(extra_args)
            proc = spawn(argv, log_path=log_path, cwd=sdir, die_with_parent=die_with_parent)
            process = Process("redis-server", proc.pid, _MARKER, log_path, proc)
            process.wait_ready(
                lambda: redis_ping(HOST, port, timeout=1.0),
                timeout=timeout,
                interval=0.05,
                late=lambda: (
                    f"redis-server on port {port} did not answer PING within {timeout:.0f} s"
                ),
                stop_timeout=_FAILED_START_STOP_TIMEOUT,
            )
            return port, sdir, process

        server = cls(HOST, *start_retrying(attempt, "redis-server"))
        log.info("redis-server ready at %s (pid %d, dir %s)", server.url, server.pid, server.dir)
        return server

    def alive(self) -> bool:
        return self.process.alive()

    def ping(self) -> bool:
        return redis_ping(self.host, self.port)

    def stop(self, *, remove_dir: bool = True) -> None:
        self.process.stop()
        if remove_dir:
            remove_service_dir(self.dir)

    def env_value(self) -> str:
        return self.url

    def to_record(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "host": self.host,
            "port": self.port,
            "dir": str(self.dir),
            "log": str(self.process.log_path),
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Self:
        log_path = Path(rec["log"])
        process = Process("redis-server", int(rec["pid"]), _MARKER, log_path)
        return cls(str(rec["host"]), int(rec["port"]), Path(rec["dir"]), process)

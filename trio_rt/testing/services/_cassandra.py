"""Start and stop real Redis and Cassandra servers for development, tests and CI.

Nothing here is a mock: Redis is Debian's ``redis-server`` binary, Cassandra is the
``org.apache.cassandra:cassandra-all`` server jar from Maven Central, run directly as
``java ... org.apache.cassandra.service.CassandraDaemon`` on Java 17.

Python API (stdlib only; no trio needed)::

    with RedisServer.start() as redis:          # redis.url == "redis://127.0.0.1:PORT/0"
        ...
    with CassandraServer.start() as cass:       # cass.host, cass.port (CQL native port)
        ...
    with RedisCluster.start() as cluster:       # cluster.addresses == ["127.0.0.1:P1", ...]
        ...

Command line::

    python -m trio_rt.testing.services up [--redis] [--cassandra] [--redis-cluster]
    python -m trio_rt.testing.services status
    python -m trio_rt.testing.services down

``up`` starts detached servers, records them in ``<state dir>/services.json`` and prints
``export TRIO_RT_...=...`` lines (so ``eval "$(python -m trio_rt.testing.services up)"``
works); ``down`` stops what the state file lists.

Environment variables:

* ``TRIO_RT_SERVICES_DIR``: state dir (default ``<repo>/.services`` for a source checkout,
  else ``./.services``).  Every server gets its own sub-directory there (data + logs).
* ``TRIO_RT_CACHE_DIR``: download cache (default ``$XDG_CACHE_HOME/trio_rt`` or
  ``~/.cache/trio_rt``); the Cassandra jars go to ``cassandra-<version>/lib``.
* ``TRIO_RT_CASSANDRA_VERSION``: Cassandra 5.0.x version (default :data:`CASSANDRA_VERSION`).
* ``TRIO_RT_CASSANDRA_HEAP`` / ``TRIO_RT_CASSANDRA_HEAP_MIN``: ``-Xmx`` / ``-Xms`` of the
  Cassandra JVM (defaults :data:`CASSANDRA_HEAP`, :data:`CASSANDRA_HEAP_MIN`).
* ``TRIO_RT_JAVA_HOME``: a Java 17 home to use (else ``JAVA_HOME`` if it is Java 17, else
  ``/usr/lib/jvm/java-17-openjdk-*``, else ``java`` on ``PATH`` if it is Java 17).
* ``TRIO_RT_KEEP_SERVICE_DIRS=1``: keep data/log dirs after a clean stop.
* ``TRIO_RT_NO_APT=1``: never run ``apt-get`` to install missing ``redis-server``,
  ``maven`` or ``openjdk-17-jre-headless`` (by default this happens when running as root).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import fcntl
import importlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import string
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Self

__all__ = [
    "CASSANDRA_HEAP",
    "CASSANDRA_HEAP_MIN",
    "CASSANDRA_VERSION",
    "CassandraEndpoint",
    "CassandraServer",
    "RedisCluster",
    "RedisServer",
    "ServiceError",
    "cassandra_release_version",
    "default_state_dir",
    "ensure_cassandra_jars",
    "find_java17",
    "main",
    "parse_cassandra_endpoint",
    "redis_ping",
]

log = logging.getLogger("trio_rt.testing.services")

#: Newest 5.0.x that Maven Central served when this was written (checked 2026-11).
CASSANDRA_VERSION = "5.0.9"
#: Maximum heap of the test node (``-Xmx``).
CASSANDRA_HEAP = "768m"
#: Initial heap (``-Xms``).  Cassandra ``mlockall``s the memory mapped at startup when it
#: runs as root, so a small ``-Xms`` keeps the resident size down.
CASSANDRA_HEAP_MIN = "256m"
CASSANDRA_START_TIMEOUT = 180.0
REDIS_START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0
HOST = "127.0.0.1"
CASSANDRA_MAIN = "org.apache.cassandra.service.CassandraDaemon"
STATE_FILE = "services.json"

_HERE = Path(__file__).resolve().parent.parent  # trio_rt/testing
_CASSANDRA_FILES = _HERE / "cassandra"


class ServiceError(RuntimeError):
    """A service could not be installed, started, reached or stopped."""


# --------------------------------------------------------------------------- paths


def default_state_dir() -> Path:
    """``$TRIO_RT_SERVICES_DIR``, else ``<repo>/.services`` in a checkout, else ``./.services``."""
    env = os.environ.get("TRIO_RT_SERVICES_DIR")
    if env:
        return Path(env).expanduser().resolve()
    repo = _HERE.parent.parent
    if (repo / "pyproject.toml").is_file() and (repo / "trio_rt").is_dir():
        return repo / ".services"
    return Path.cwd() / ".services"


def default_cache_dir() -> Path:
    env = os.environ.get("TRIO_RT_CACHE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "trio_rt"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _tail(path: Path, lines: int = 60) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read()
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    text = data.decode("utf-8", "replace").splitlines()[-lines:]
    # Cassandra logs its whole configuration on one huge line; keep tails readable.
    return "\n".join(line if len(line) <= 600 else line[:600] + " [...]" for line in text)


def _fail(message: str, log_path: Path | None, lines: int = 60) -> ServiceError:
    if log_path is not None:
        message += f"\n--- last {lines} lines of {log_path} ---\n{_tail(log_path, lines)}"
    return ServiceError(message)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# ------------------------------------------------------------------- system packages

_apt_updated = False


def _apt_install(packages: Sequence[str], why: str) -> None:
    """Install Debian packages (root only, non-interactive); raise with a hint otherwise."""
    global _apt_updated
    cmd = "apt-get install -y --no-install-recommends " + " ".join(packages)
    if _env_flag("TRIO_RT_NO_APT") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ServiceError(f"{why}; install it with: sudo apt-get update && sudo {cmd}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log.warning("%s: running apt-get to install %s", why, " ".join(packages))
    steps: list[list[str]] = []
    if not _apt_updated:
        steps.append(["apt-get", "update", "-q"])
    steps.append(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages])
    for argv in steps:
        res = subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
        if res.returncode != 0:
            out = (res.stdout + res.stderr).strip().splitlines()[-30:]
            raise ServiceError(
                f"{why}; `{' '.join(argv)}` failed (exit {res.returncode}):\n" + "\n".join(out)
            )
        if argv[1] == "update":
            _apt_updated = True


def _require_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        with _file_lock(default_cache_dir() / "apt.lock"):  # one of our apt-gets at a time
            path = shutil.which(name)
            if path is None:
                _apt_install([package], f"`{name}` is not installed")
                path = shutil.which(name)
        if path is None:
            raise ServiceError(f"installed {package} but `{name}` is still not on PATH")
    return path


# ---------------------------------------------------------------------------- ports


def _free_ports(count: int, *, bus_offset: int | None = None) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (picked by binding port 0).

    With ``bus_offset`` every returned port ``p`` also has ``p + bus_offset`` free (Redis
    Cluster's bus port).  A small race remains until the server binds; callers retry.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(count * 50):
            if len(ports) == count:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            held.append(s)
            port = int(s.getsockname()[1])
            if bus_offset is not None:
                if port + bus_offset > 65535:
                    continue
                bus = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    bus.bind((HOST, port + bus_offset))
                except OSError:
                    bus.close()
                    continue
                held.append(bus)
            ports.append(port)
    finally:
        for s in held:
            s.close()
    if len(ports) != count:
        raise ServiceError(f"could not find {count} free ports on {HOST}")
    return ports


def _port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------- processes


def _parent_death_signal_setter() -> Callable[[], None]:
    # Look prctl up in the parent: the child (between fork and exec) must not dlopen.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def set_pdeathsig() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)

    return set_pdeathsig


def _spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    cwd: Path,
    env: dict[str, str] | None = None,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a server in its own session, stdout+stderr appended to ``log_path``.

    ``die_with_parent`` asks Linux to SIGTERM the server when the starting thread dies
    (used by the pytest fixtures, so a killed test run leaves no servers behind).  It is
    only honoured on the main thread: the signal follows the *thread*, not the process.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    preexec: Callable[[], None] | None = None
    if die_with_parent and sys.platform == "linux":
        if threading.current_thread() is threading.main_thread():
            preexec = _parent_death_signal_setter()
    with log_path.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            preexec_fn=preexec,
        )


def _proc_cmdline(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def _pid_alive(pid: int, marker: bytes | None = None) -> bool:
    """True if ``pid`` runs (not a zombie) and, with ``marker``, its cmdline contains it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
    if state in {"Z", "X"}:
        return False
    if marker is not None:
        cmd = _proc_cmdline(pid)
        return cmd is not None and marker in cmd
    return True


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclasses.dataclass
class _Process:
    """A server process: our child (``proc``) or, after a CLI restart, just a pid."""

    name: str
    pid: int
    marker: bytes
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return _pid_alive(self.pid, self.marker)

    def _wait(self, timeout: float) -> bool:
        if self.proc is not None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while _pid_alive(self.pid, self.marker):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL."""
        if not self.alive():
            if self.proc is not None:
                self.proc.wait()
            return
        log.info("stopping %s (pid %d)", self.name, self.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        if self._wait(timeout):
            return
        log.warning("%s (pid %d) ignored SIGTERM for %.0f s: SIGKILL", self.name, self.pid, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        if not self._wait(10.0):
            raise ServiceError(f"{self.name} (pid {self.pid}) survived SIGKILL")


def _remove_dir(path: Path) -> None:
    if _env_flag("TRIO_RT_KEEP_SERVICE_DIRS"):
        return
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------- RESP (Redis)

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
    """Send one command over a fresh connection (tiny stdlib RESP client)."""
    payload = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        payload.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"".join(payload))
        with sock.makefile("rb") as f:
            return _read_resp(f)


def redis_ping(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        return redis_command(host, port, "PING", timeout=timeout) == "PONG"
    except (OSError, ServiceError, ValueError):
        return False


def _parse_host_port(text: str, default_port: int) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):  # [::1]:9042
        host, _, rest = text[1:].partition("]")
        return host, int(rest.lstrip(":") or default_port)
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    return host, int(port)


def parse_redis_url(url: str) -> tuple[str, int]:
    """``redis://host:port/db`` -> (host, port) (no auth/TLS handling: test servers only)."""
    rest = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    return _parse_host_port(rest, 6379)


# ----------------------------------------------------------------------------- Redis


@dataclasses.dataclass
class RedisServer:
    """One ``redis-server`` child on 127.0.0.1, no persistence, own dir under the state dir."""

    host: str
    port: int
    dir: Path
    process: _Process

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

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
        """Start ``redis-server`` on a free port; return once PING answers."""
        binary = _require_binary("redis-server", "redis-server")
        root = Path(state_dir) if state_dir is not None else default_state_dir()
        root.mkdir(parents=True, exist_ok=True)
        last_error: ServiceError | None = None
        for _attempt in range(3):
            (port,) = _free_ports(1, bus_offset=10000 if cluster else None)
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
            proc = _spawn(argv, log_path=log_path, cwd=sdir, die_with_parent=die_with_parent)
            process = _Process("redis-server", proc.pid, b"redis-server", log_path, proc)
            server = cls(HOST, port, sdir, process)
            try:
                server._wait_ready(timeout)
            except ServiceError as exc:
                process.stop(5.0)
                last_error = exc
                if "Address already in use" in _tail(log_path, 20):
                    log.info("redis port %d was taken meanwhile; retrying", port)
                    continue
                raise
            log.info("redis-server ready at %s (pid %d, dir %s)", server.url, server.pid, sdir)
            return server
        assert last_error is not None
        raise last_error

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.process.alive():
                raise _fail(
                    f"redis-server on port {self.port} exited during startup", self.process.log_path
                )
            if redis_ping(self.host, self.port, timeout=1.0):
                return
            if time.monotonic() >= deadline:
                raise _fail(
                    f"redis-server on port {self.port} did not answer PING within {timeout:.0f} s",
                    self.process.log_path,
                )
            time.sleep(0.05)

    def ping(self) -> bool:
        return redis_ping(self.host, self.port)

    def stop(self, *, remove_dir: bool = True) -> None:
        self.process.stop()
        if remove_dir:
            _remove_dir(self.dir)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

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
        process = _Process("redis-server", int(rec["pid"]), b"redis-server", log_path)
        return cls(str(rec["host"]), int(rec["port"]), Path(rec["dir"]), process)


@dataclasses.dataclass
class RedisCluster:
    """A local Redis Cluster: N masters, no replicas, created with ``redis-cli --cluster``."""

    nodes: list[RedisServer]

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    @classmethod
    def start(
        cls,
        state_dir: Path | str | None = None,
        *,
        masters: int = 3,
        die_with_parent: bool = False,
        timeout: float = 60.0,
    ) -> Self:
        cli = _require_binary("redis-cli", "redis-tools")
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
                raise _fail(
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
        deadline = time.monotonic() + timeout
        pending = list(self.nodes)
        while pending:
            node = pending[0]
            try:
                info = redis_command(node.host, node.port, "CLUSTER", "INFO")
            except (OSError, ServiceError):
                info = None
            if isinstance(info, bytes) and b"cluster_state:ok" in info:
                pending.pop(0)
                continue
            if time.monotonic() >= deadline:
                raise _fail(
                    f"redis cluster node {node.address} not in cluster_state:ok after "
                    f"{timeout:.0f} s (CLUSTER INFO: {info!r})",
                    node.process.log_path,
                    20,
                )
            time.sleep(0.1)

    def ping(self) -> bool:
        return all(n.ping() for n in self.nodes)

    def stop(self, *, remove_dir: bool = True) -> None:
        errors: list[Exception] = []
        for node in self.nodes:
            try:
                node.stop(remove_dir=remove_dir)
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def to_record(self) -> dict[str, Any]:
        return {"nodes": [n.to_record() for n in self.nodes]}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Self:
        return cls([RedisServer.from_record(n) for n in rec["nodes"]])


# ------------------------------------------------------------------ CQL (Cassandra)


@dataclasses.dataclass(frozen=True)
class CassandraEndpoint:
    """Where a Cassandra node's CQL native transport listens."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_cassandra_endpoint(text: str) -> CassandraEndpoint:
    """``"host:port"`` (or ``"host"``, port 9042) -> :class:`CassandraEndpoint`."""
    host, port = _parse_host_port(text, 9042)
    return CassandraEndpoint(host, port)


def _cql_string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack(">H", len(raw)) + raw


class _CqlReader:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.body):
            raise ServiceError("truncated CQL frame")
        out = self.body[self.pos : self.pos + n]
        self.pos += n
        return out

    def int32(self) -> int:
        return int(struct.unpack(">i", self.take(4))[0])

    def uint16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def string(self) -> str:
        return self.take(self.uint16()).decode()

    def bytes_(self) -> bytes | None:
        n = self.int32()
        return None if n < 0 else self.take(n)

    def option(self) -> None:
        type_id = self.uint16()
        if type_id == 0x0000:  # custom
            self.string()
        elif type_id in (0x0020, 0x0022):  # list, set
            self.option()
        elif type_id == 0x0021:  # map
            self.option()
            self.option()
        elif type_id >= 0x0030:  # udt, tuple: not needed for the probe query
            raise ServiceError(f"unsupported CQL type 0x{type_id:04x} in probe result")


def _cql_exchange(sock: socket.socket, opcode: int, body: bytes) -> tuple[int, _CqlReader]:
    sock.sendall(struct.pack(">BBhBi", 0x04, 0, 0, opcode, len(body)) + body)
    header = b""
    while len(header) < 9:
        chunk = sock.recv(9 - len(header))
        if not chunk:
            raise ConnectionError("connection closed by cassandra")
        header += chunk
    _version, _flags, _stream, op, length = struct.unpack(">BBhBi", header)
    data = bytearray()
    while len(data) < length:
        chunk = sock.recv(min(65536, length - len(data)))
        if not chunk:
            raise ConnectionError("connection closed by cassandra")
        data += chunk
    reader = _CqlReader(bytes(data))
    if op == 0x00:  # ERROR
        code = reader.int32()
        raise ServiceError(f"CQL error 0x{code:04x}: {reader.string()}")
    return int(op), reader


def cassandra_release_version(host: str, port: int, timeout: float = 5.0) -> str:
    """Run ``SELECT release_version FROM system.local`` over CQL native protocol v4.

    A tiny stdlib client, so readiness checks and ``status`` need no driver.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        op, _ = _cql_exchange(
            sock, 0x01, struct.pack(">H", 1) + _cql_string("CQL_VERSION") + _cql_string("3.0.0")
        )
        if op != 0x02:  # READY (0x03 would be AUTHENTICATE)
            raise ServiceError(f"unexpected CQL opcode 0x{op:02x} after STARTUP")
        query = b"SELECT release_version FROM system.local"
        body = struct.pack(">i", len(query)) + query + struct.pack(">HB", 0x0001, 0)
        op, r = _cql_exchange(sock, 0x07, body)
        if op != 0x08 or r.int32() != 0x0002:  # RESULT / Rows
            raise ServiceError("unexpected CQL reply to the probe query")
        flags, ncols = r.int32(), r.int32()
        if flags & 0x0002:
            r.bytes_()
        if flags & 0x0001:
            r.string()
            r.string()
        for _ in range(ncols):
            if not flags & 0x0001:
                r.string()
                r.string()
            r.string()
            r.option()
        if r.int32() < 1 or ncols < 1:
            raise ServiceError("system.local returned no row")
        value = r.bytes_()
        return "" if value is None else value.decode()


def _driver_release_version(host: str, port: int) -> str | None:
    """Same query through cassandra-driver, if installed (None when it is not)."""
    try:
        cluster_mod = importlib.import_module("cassandra.cluster")
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # driver-internal deprecations are not ours to fail on
        policies = importlib.import_module("cassandra.policies")
        cluster = cluster_mod.Cluster(
            [host],
            port=port,
            protocol_version=5,  # Cassandra 5.0 speaks v5; avoids the driver's downgrade dance
            load_balancing_policy=policies.RoundRobinPolicy(),
            connect_timeout=5,
        )
        try:
            session = cluster.connect()
            row = session.execute("SELECT release_version FROM system.local").one()
            return str(row.release_version)
        finally:
            cluster.shutdown()


# ------------------------------------------------------------------------ Java, jars


def _java_major(java: Path) -> int | None:
    try:
        res = subprocess.run(
            [str(java), "-version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', res.stderr + res.stdout)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def find_java17(*, install: bool = True) -> Path:
    """Return a Java 17 home (never a newer JDK: Cassandra 5.0 cannot run on Java 24+)."""
    candidates: list[Path] = []
    for var in ("TRIO_RT_JAVA_HOME", "JAVA_HOME"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]))
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        candidates += sorted(jvm.glob("java-17-openjdk*"))
        candidates += sorted(p for p in jvm.glob("*17*") if p not in candidates)
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path).resolve().parent.parent)
    seen: set[Path] = set()
    for home in candidates:
        java = home / "bin" / "java"
        if home in seen or not java.is_file():
            continue
        seen.add(home)
        if _java_major(java) == 17:
            return home
        if os.environ.get("TRIO_RT_JAVA_HOME") and home == Path(os.environ["TRIO_RT_JAVA_HOME"]):
            raise ServiceError(f"TRIO_RT_JAVA_HOME={home} is not a Java 17")
    if install:
        with _file_lock(default_cache_dir() / "apt.lock"):
            _apt_install(["openjdk-17-jre-headless"], "no Java 17 found for Cassandra")
        return find_java17(install=False)
    raise ServiceError("no Java 17 found (looked at $TRIO_RT_JAVA_HOME, $JAVA_HOME, /usr/lib/jvm)")


def _cassandra_version() -> str:
    return os.environ.get("TRIO_RT_CASSANDRA_VERSION") or CASSANDRA_VERSION


def ensure_cassandra_jars(version: str | None = None, *, java_home: Path | None = None) -> Path:
    """Download cassandra-all and its runtime deps with Maven, once; return the lib dir.

    The jars go to ``<cache>/cassandra-<version>/lib``; a ``.complete`` marker makes later
    calls return at once.  Maven's own ``~/.m2`` cache is used too.
    """
    version = version or _cassandra_version()
    home = default_cache_dir() / f"cassandra-{version}"
    lib = home / "lib"
    marker = lib / ".complete"
    if marker.is_file():
        return lib
    with _file_lock(home.parent / f"cassandra-{version}.lock"):
        if marker.is_file():
            return lib
        mvn = _require_binary("mvn", "maven")
        java_home = java_home or find_java17()
        tmp = home / "lib.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        argv = [
            mvn, "-B", "-q",
            "-f", str(_CASSANDRA_FILES / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
            "-DincludeScope=runtime",
            f"-Dcassandra.version={version}",
        ]  # fmt: skip
        log.info("downloading Cassandra %s jars with Maven into %s", version, lib)
        started = time.monotonic()
        env = dict(os.environ, JAVA_HOME=str(java_home))
        res = subprocess.run(
            argv,
            cwd=home,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        jar = tmp / f"cassandra-all-{version}.jar"
        if res.returncode != 0 or not jar.is_file():
            out = (res.stdout + res.stderr).strip().splitlines()[-40:]
            raise ServiceError(
                f"`{shlex.join(argv)}` failed (exit {res.returncode}):\n" + "\n".join(out)
            )
        shutil.rmtree(lib, ignore_errors=True)
        tmp.rename(lib)
        njars = len(list(lib.glob("*.jar")))
        marker.write_text(f"{version}\n")
        log.info("Cassandra %s: %d jars in %.1f s", version, njars, time.monotonic() - started)
    return lib


# Module flags from Cassandra 5.0's conf/jvm17-server.options (+ two that embedders add).
_JAVA17_EXPORTS = [
    "java.base/jdk.internal.misc",
    "java.management.rmi/com.sun.jmx.remote.internal.rmi",
    "java.management/com.sun.jmx.remote.security",
    "java.rmi/sun.rmi.registry",
    "java.rmi/sun.rmi.server",
    "java.sql/java.sql",
    "java.base/java.lang.ref",
    "jdk.unsupported/sun.misc",
    "jdk.compiler/com.sun.tools.javac.file",
    "jdk.attach/sun.tools.attach",
]
_JAVA17_OPENS = [
    "java.base/java.lang.module",
    "java.base/jdk.internal.loader",
    "java.base/jdk.internal.ref",
    "java.base/jdk.internal.reflect",
    "java.base/jdk.internal.math",
    "java.base/jdk.internal.module",
    "java.base/jdk.internal.util.jar",
    "jdk.management/com.sun.management.internal",
    "java.base/sun.nio.ch",
    "java.base/java.io",
    "java.base/java.nio",
    "java.base/java.lang.reflect",
    "jdk.compiler/com.sun.tools.javac",
    "java.base/java.lang",
    "java.base/java.util",
]

_STARTUP_FAILURE = re.compile(
    r"encountered during startup|Fatal configuration error|Exception in thread \"main\"|"
    r"Error: Could not find or load main class|Error occurred during initialization of VM"
)


def _java_size(text: str) -> int:
    """``"768m"`` -> bytes (JVM size syntax: k, m, g, t suffixes)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT]?)\s*", text)
    if not m:
        raise ServiceError(f"invalid JVM memory size {text!r} (expected e.g. 512m or 1g)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    return int(m.group(1)) * scale[m.group(2).lower()]


def cassandra_jvm_args(lib: Path, sdir: Path, heap: str, heap_min: str) -> list[str]:
    jamm = sorted(lib.glob("jamm-*.jar"))
    if not jamm:
        raise ServiceError(f"no jamm-*.jar in {lib}")
    args = [
        f"-Xms{heap_min}",
        f"-Xmx{heap}",
        "-Xss256k",
        "-XX:+UseG1GC",
        "-XX:+PerfDisableSharedMem",
        "-XX:+ExitOnOutOfMemoryError",
        f"-XX:ErrorFile={sdir / 'logs' / 'hs_err_pid%p.log'}",
        "-Djava.net.preferIPv4Stack=true",
        f"-javaagent:{jamm[-1]}",
        "-Djdk.attach.allowAttachSelf=true",
        "-Dio.netty.tryReflectionSetAccessible=true",
    ]
    for module in _JAVA17_EXPORTS:
        args += ["--add-exports", f"{module}=ALL-UNNAMED"]
    for module in _JAVA17_OPENS:
        args += ["--add-opens", f"{module}=ALL-UNNAMED"]
    args += [
        "-Dcassandra-foreground=yes",
        f"-Dcassandra.config={(sdir / 'cassandra.yaml').as_uri()}",
        f"-Dcassandra.storagedir={sdir}",
        f"-Dcassandra.logdir={sdir / 'logs'}",
        f"-Dlogback.configurationFile={sdir / 'logback.xml'}",
        "-Dcassandra.skip_wait_for_gossip_to_settle=0",
        "-Dcassandra.load_ring_state=false",
        "-Dcassandra.ring_delay_ms=1000",
        "-cp",
        f"{lib}/*",
        CASSANDRA_MAIN,
    ]
    return args


@dataclasses.dataclass
class CassandraServer:
    """A single-node Apache Cassandra 5.0 (``CassandraDaemon`` on Java 17) as a child process."""

    host: str
    port: int
    storage_port: int
    version: str
    dir: Path
    process: _Process

    @property
    def endpoint(self) -> CassandraEndpoint:
        return CassandraEndpoint(self.host, self.port)

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(
        cls,
        state_dir: Path | str | None = None,
        *,
        version: str | None = None,
        heap: str | None = None,
        heap_min: str | None = None,
        timeout: float = CASSANDRA_START_TIMEOUT,
        die_with_parent: bool = False,
        extra_yaml: str = "",
    ) -> Self:
        """Download (once), configure and start a node; return when a CQL query works."""
        version = version or _cassandra_version()
        heap = heap or os.environ.get("TRIO_RT_CASSANDRA_HEAP") or CASSANDRA_HEAP
        heap_min = heap_min or os.environ.get("TRIO_RT_CASSANDRA_HEAP_MIN") or CASSANDRA_HEAP_MIN
        if _java_size(heap_min) > _java_size(heap):
            heap_min = heap
        java_home = find_java17()
        lib = ensure_cassandra_jars(version, java_home=java_home)
        java = java_home / "bin" / "java"
        root = Path(state_dir) if state_dir is not None else default_state_dir()
        root.mkdir(parents=True, exist_ok=True)
        last_error: ServiceError | None = None
        for _attempt in range(3):
            native_port, storage_port = _free_ports(2)
            sdir = Path(tempfile.mkdtemp(prefix=f"cassandra-{native_port}-", dir=root))
            for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw", "logs"):
                (sdir / sub).mkdir()
            template = string.Template((_CASSANDRA_FILES / "cassandra.yaml.in").read_text())
            (sdir / "cassandra.yaml").write_text(
                template.substitute(
                    host=HOST,
                    storage_port=storage_port,
                    native_port=native_port,
                    data_dir=str(sdir),
                    extra=extra_yaml,
                )
            )
            shutil.copyfile(_CASSANDRA_FILES / "logback.xml", sdir / "logback.xml")
            log_path = sdir / "logs" / "cassandra.log"
            argv = [str(java), *cassandra_jvm_args(lib, sdir, heap, heap_min)]
            (sdir / "command.txt").write_text(shlex.join(argv) + "\n")
            env = dict(os.environ, JAVA_HOME=str(java_home))
            env.pop("JAVA_TOOL_OPTIONS", None)
            env.pop("_JAVA_OPTIONS", None)
            log.info(
                "starting Cassandra %s on %s:%d (storage port %d, heap %s, dir %s)",
                version, HOST, native_port, storage_port, heap, sdir,
            )  # fmt: skip
            proc = _spawn(
                argv, log_path=log_path, cwd=sdir, env=env, die_with_parent=die_with_parent
            )
            process = _Process("cassandra", proc.pid, CASSANDRA_MAIN.encode(), log_path, proc)
            server = cls(HOST, native_port, storage_port, version, sdir, process)
            started = time.monotonic()
            try:
                server._wait_ready(timeout)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    process.stop()
                if not isinstance(exc, ServiceError):
                    raise
                last_error = exc
                if "Address already in use" in _tail(log_path, 200):
                    log.info("a Cassandra port was taken meanwhile; retrying")
                    continue
                raise
            log.info(
                "Cassandra %s ready at %s:%d in %.1f s (pid %d, RSS %s MiB)",
                version, HOST, native_port, time.monotonic() - started, server.pid,
                (server.rss_kib() or 0) // 1024,
            )  # fmt: skip
            return server
        assert last_error is not None
        raise last_error

    def _log_shows_failure(self) -> bool:
        return bool(_STARTUP_FAILURE.search(_tail(self.process.log_path, 400)))

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_probe_error = ""
        while True:
            if not self.process.alive():
                code = self.process.proc.returncode if self.process.proc else "?"
                raise _fail(
                    f"Cassandra (pid {self.pid}) exited with code {code} during startup",
                    self.process.log_path,
                )
            if self._log_shows_failure():
                raise _fail(
                    f"Cassandra (pid {self.pid}) reported a startup failure", self.process.log_path
                )
            if _port_open(self.host, self.port, timeout=1.0):
                try:
                    cassandra_release_version(self.host, self.port)
                    driver_version = _driver_release_version(self.host, self.port)
                except Exception as exc:  # not ready yet (bootstrapping, schema...)
                    last_probe_error = f"{type(exc).__name__}: {exc}"
                else:
                    if driver_version is not None:
                        log.info("cassandra-driver query ok (release_version %s)", driver_version)
                    return
            if time.monotonic() >= deadline:
                detail = f" (last CQL probe error: {last_probe_error})" if last_probe_error else ""
                raise _fail(
                    f"Cassandra (pid {self.pid}) did not answer CQL on {self.host}:{self.port} "
                    f"within {timeout:.0f} s{detail}",
                    self.process.log_path,
                )
            time.sleep(0.5)

    def ping(self) -> bool:
        try:
            cassandra_release_version(self.host, self.port, timeout=3.0)
        except (OSError, ServiceError):
            return False
        return True

    def rss_kib(self) -> int | None:
        return _rss_kib(self.pid)

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.process.log_path, lines)

    def stop(self, *, remove_dir: bool = True) -> None:
        """SIGTERM, then SIGKILL after 20 s; remove the node's dir unless told otherwise."""
        self.process.stop(STOP_TIMEOUT)
        if remove_dir:
            _remove_dir(self.dir)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def to_record(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "host": self.host,
            "port": self.port,
            "storage_port": self.storage_port,
            "version": self.version,
            "dir": str(self.dir),
            "log": str(self.process.log_path),
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Self:
        process = _Process("cassandra", int(rec["pid"]), CASSANDRA_MAIN.encode(), Path(rec["log"]))
        return cls(
            str(rec["host"]),
            int(rec["port"]),
            int(rec["storage_port"]),
            str(rec["version"]),
            Path(rec["dir"]),
            process,
        )


# ------------------------------------------------------------------------------ CLI

ServiceRecord = RedisServer | RedisCluster | CassandraServer
_KINDS: dict[str, type[RedisServer] | type[RedisCluster] | type[CassandraServer]] = {
    "redis": RedisServer,
    "cassandra": CassandraServer,
    "redis_cluster": RedisCluster,
}


def _load_state(state_dir: Path) -> dict[str, ServiceRecord]:
    path = state_dir / STATE_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ServiceError(f"cannot read {path}: {exc}") from exc
    out: dict[str, ServiceRecord] = {}
    for name, rec in raw.get("services", {}).items():
        kind = _KINDS.get(name)
        if kind is not None:
            out[name] = kind.from_record(rec)
    return out


def _save_state(state_dir: Path, services: dict[str, ServiceRecord]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / STATE_FILE
    data = {"services": {name: svc.to_record() for name, svc in services.items()}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _alive(svc: ServiceRecord) -> bool:
    if isinstance(svc, RedisCluster):
        return all(n.process.alive() for n in svc.nodes)
    return svc.process.alive()


def _exports(name: str, svc: ServiceRecord) -> str:
    if isinstance(svc, RedisServer):
        return f"export TRIO_RT_REDIS_URL={shlex.quote(svc.url)}"
    if isinstance(svc, CassandraServer):
        return f"export TRIO_RT_CASSANDRA={shlex.quote(str(svc.endpoint))}"
    return f"export TRIO_RT_REDIS_CLUSTER={shlex.quote(','.join(svc.addresses))}"


def _describe(name: str, svc: ServiceRecord) -> tuple[bool, str]:
    if isinstance(svc, RedisCluster):
        pids = ",".join(str(n.pid) for n in svc.nodes)
        where = ",".join(svc.addresses)
    elif isinstance(svc, RedisServer):
        pids, where = str(svc.pid), svc.url
    else:
        pids, where = str(svc.pid), f"{svc.endpoint} (Cassandra {svc.version})"
    if not _alive(svc):
        state = "DEAD"
    elif svc.ping():
        state = "up"
    else:
        state = "NOT ANSWERING"
    extra = ""
    if isinstance(svc, CassandraServer) and state != "DEAD":
        rss = svc.rss_kib()
        extra = f" rss={rss // 1024}MiB" if rss else ""
    return state == "up", f"{name:<14} {state:<14} pid={pids:<20} {where}{extra}"


def _stop_service(svc: ServiceRecord) -> None:
    svc.stop()


def _cmd_up(state_dir: Path, wanted: list[str]) -> int:
    with _file_lock(state_dir / ".lock"):
        services = _load_state(state_dir)
        for name in wanted:
            svc = services.get(name)
            if svc is not None and _alive(svc) and svc.ping():
                log.info("%s already running: %s", name, _exports(name, svc))
                continue
            if svc is not None:
                log.info("%s recorded in the state file is gone or not answering; restarting", name)
                with contextlib.suppress(Exception):
                    _stop_service(svc)
                del services[name]
                _save_state(state_dir, services)
            new: ServiceRecord
            if name == "redis":
                new = RedisServer.start(state_dir)
            elif name == "cassandra":
                new = CassandraServer.start(state_dir)
            else:
                new = RedisCluster.start(state_dir)
            services[name] = new
            _save_state(state_dir, services)
        for name in wanted:
            print(_exports(name, services[name]))
    return 0


def _cmd_down(state_dir: Path, wanted: list[str] | None) -> int:
    with _file_lock(state_dir / ".lock"):
        services = _load_state(state_dir)
        failed = False
        for name in list(services):
            if wanted is not None and name not in wanted:
                continue
            try:
                _stop_service(services[name])
                log.info("stopped %s", name)
            except ServiceError as exc:
                log.error("could not stop %s: %s", name, exc)
                failed = True
                continue
            del services[name]
            _save_state(state_dir, services)
        if not services:
            with contextlib.suppress(FileNotFoundError):
                (state_dir / STATE_FILE).unlink()
    return 1 if failed else 0


def _cmd_status(state_dir: Path) -> int:
    services = _load_state(state_dir)
    if not services:
        print(f"no services recorded in {state_dir / STATE_FILE}")
        return 0
    ok = True
    for name, svc in services.items():
        answering, line = _describe(name, svc)
        ok = ok and answering
        print(line)
    return 0 if ok else 3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trio_rt.testing.services",
        description="Start/stop real Redis and Cassandra servers for trio_rt development.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="state dir (default: $TRIO_RT_SERVICES_DIR or <repo>/.services)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd, help_text in (
        ("up", "start services in the background (default: --redis --cassandra)"),
        ("down", "stop the services listed in the state file (default: all)"),
    ):
        p = sub.add_parser(cmd, help=help_text)
        p.add_argument("--redis", action="store_true", help="single Redis server")
        p.add_argument("--cassandra", action="store_true", help="single-node Cassandra 5.0")
        p.add_argument("--redis-cluster", action="store_true", help="3-master Redis Cluster")
    sub.add_parser("status", help="show the services in the state file")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)  # our logger only: the driver's stays quiet
    handler.setFormatter(logging.Formatter("[services] %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    log.propagate = False
    state_dir = (args.state_dir or default_state_dir()).resolve()
    try:
        if args.command == "status":
            return _cmd_status(state_dir)
        selected = [
            name
            for name, flag in (
                ("redis", args.redis),
                ("cassandra", args.cassandra),
                ("redis_cluster", args.redis_cluster),
            )
            if flag
        ]
        if args.command == "up":
            return _cmd_up(state_dir, selected or ["redis", "cassandra"])
        return _cmd_down(state_dir, selected or None)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

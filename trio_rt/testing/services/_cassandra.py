"""A single-node Apache Cassandra 5.0: its jars (Maven), its JVM, and a stdlib CQL probe.

The server is the ``org.apache.cassandra:cassandra-all`` jar from Maven Central run directly
as ``java ... org.apache.cassandra.service.CassandraDaemon`` on Java 17 (``bin/cassandra``
is not published to Maven).  The config templates are in ``trio_rt/testing/cassandra/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import re
import shlex
import shutil
import signal
import socket
import string
import struct
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

from ._base import (
    HOST,
    STOP_TIMEOUT,
    Process,
    Service,
    ServiceError,
    default_cache_dir,
    default_state_dir,
    file_lock,
    free_ports,
    log,
    parse_host_port,
    pid_rss_kib,
    port_open,
    remove_service_dir,
    spawn,
    start_retrying,
)
from ._install import find_java17, require_binary
from ._jvm import _JAVA17_EXPORTS, _JAVA17_OPENS, CASSANDRA_VERSION

if TYPE_CHECKING:
    from ...cdc import CdcAgent

#: Maximum heap of the test node (``-Xmx``).
CASSANDRA_HEAP = "768m"
#: Initial heap (``-Xms``).  Cassandra ``mlockall``s the memory mapped at startup when it
#: runs as root, so a small ``-Xms`` keeps the resident size down.
CASSANDRA_HEAP_MIN = "256m"
CASSANDRA_START_TIMEOUT = 180.0
CASSANDRA_MAIN = "org.apache.cassandra.service.CassandraDaemon"
_MARKER = CASSANDRA_MAIN.encode()

# The data directory trio_rt/testing/cassandra/ (cassandra.yaml.in, logback.xml, pom.xml).
_CASSANDRA_FILES = Path(__file__).resolve().parent.parent / "cassandra"


# ------------------------------------------------------------------ CQL probe


@dataclasses.dataclass(frozen=True)
class CassandraEndpoint:
    """Where a Cassandra node's CQL native transport listens."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_cassandra_endpoint(text: str) -> CassandraEndpoint:
    """``"host:port"`` (or ``"host"``, port 9042) -> :class:`CassandraEndpoint`."""
    host, port = parse_host_port(text, 9042)
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


# ----------------------------------------------------------------- jars, JVM


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
    with file_lock(home.parent / f"cassandra-{version}.lock"):
        if marker.is_file():
            return lib
        mvn = require_binary("mvn", "maven")
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
class CassandraServer(Service):
    """A single-node Apache Cassandra 5.0 (``CassandraDaemon`` on Java 17) as a child process."""

    kind: ClassVar[str] = "cassandra"
    env_var: ClassVar[str] = "TRIO_RT_CASSANDRA"

    host: str
    port: int
    storage_port: int
    version: str
    dir: Path
    process: Process
    #: the CDC agent started beside the node (``start(cdc_agent=True)``), else None
    cdc_agent: CdcAgent | None = dataclasses.field(default=None, repr=False)

    @property
    def endpoint(self) -> CassandraEndpoint:
        return CassandraEndpoint(self.host, self.port)

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
        version: str | None = None,
        heap: str | None = None,
        heap_min: str | None = None,
        timeout: float = CASSANDRA_START_TIMEOUT,
        die_with_parent: bool = False,
        extra_yaml: str = "",
        cdc: bool = False,
        cdc_agent: bool = False,
        cdc_agent_options: dict[str, str] | None = None,
        commitlog_sync_period: str | None = None,
    ) -> Self:
        """Download (once), configure and start a node; return when a CQL query works.

        ``extra_yaml`` is appended to the generated ``cassandra.yaml``.  On failure the node
        is stopped and its directory kept (the error names its log).

        ``cdc=True`` sets ``cdc_enabled: true`` (``cdc_raw`` is ``<dir>/cdc_raw``) and a
        ``commitlog_sync_period`` of 2 ms (else 10 s): a change becomes readable in
        ``cdc_raw`` only when the commit log syncs, so the period bounds CDC latency
        (docs/cdc.md). ``cdc_agent=True`` (implies ``cdc``) also starts trio_rt's CDC agent
        beside the node (`cdc_agent`: a `trio_rt.cdc.CdcAgent`, stopped with the node;
        ``cdc_agent_options`` are its flags, e.g. ``{"poll-ms": "5"}``).
        """
        cdc = cdc or cdc_agent
        if commitlog_sync_period is None:
            commitlog_sync_period = "2ms" if cdc else "10000ms"
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

        def attempt() -> tuple[int, int, Path, Process]:
            native_port, storage_port = free_ports(2)
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
                    commitlog_sync_period=commitlog_sync_period,
                    cdc_enabled="true" if cdc else "false",
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
            proc = spawn(
                argv, log_path=log_path, cwd=sdir, env=env, die_with_parent=die_with_parent
            )
            process = Process("Cassandra", proc.pid, _MARKER, log_path, proc)
            _wait_for_cql(process, HOST, native_port, timeout)
            return native_port, storage_port, sdir, process

        started = time.monotonic()
        native_port, storage_port, sdir, process = start_retrying(attempt, "Cassandra")
        server = cls(HOST, native_port, storage_port, version, sdir, process)
        if cdc_agent:
            from ...cdc import CdcAgent  # the agent's launcher builds on this module

            try:
                server.cdc_agent = CdcAgent.start(
                    lib,
                    sdir / "cassandra.yaml",
                    sdir / "cdc_agent",
                    version=version,
                    options=cdc_agent_options,
                    die_with_parent=die_with_parent,
                )
            except BaseException:
                server.stop(remove_dir=False)
                raise
        log.info(
            "Cassandra %s ready at %s:%d in %.1f s (pid %d, RSS %s MiB)",
            version, server.host, server.port, time.monotonic() - started, server.pid,
            (server.rss_kib() or 0) // 1024,
        )  # fmt: skip
        return server

    def alive(self) -> bool:
        return self.process.alive()

    def ping(self) -> bool:
        try:
            cassandra_release_version(self.host, self.port, timeout=3.0)
        except (OSError, ServiceError):
            return False
        return True

    def rss_kib(self) -> int | None:
        """The node's resident size in KiB (None when it cannot be read)."""
        return pid_rss_kib(self.pid)

    def stop(self, *, remove_dir: bool = True) -> None:
        """SIGTERM, then SIGKILL after 20 s (the CDC agent first, if any); remove the node's
        dir unless told otherwise."""
        if self.cdc_agent is not None:
            self.cdc_agent.stop()
        self.process.stop(STOP_TIMEOUT)
        if remove_dir:
            remove_service_dir(self.dir)

    def restart(self, *, kill: bool = False, timeout: float = CASSANDRA_START_TIMEOUT) -> None:
        """Stop the node (SIGKILL with `kill`, else SIGTERM) and start it again in the same
        directory, on the same ports; return when a CQL query works. A CDC agent keeps
        running (it follows ``cdc_raw`` whatever the node does)."""
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.process.wait(30)
        else:
            self.process.stop(STOP_TIMEOUT)
        argv = shlex.split((self.dir / "command.txt").read_text())
        java_home = Path(argv[0]).parent.parent
        env = dict(os.environ, JAVA_HOME=str(java_home))
        env.pop("JAVA_TOOL_OPTIONS", None)
        env.pop("_JAVA_OPTIONS", None)
        log_path = self.process.log_path
        proc = spawn(argv, log_path=log_path, cwd=self.dir, env=env)
        self.process = Process("Cassandra", proc.pid, _MARKER, log_path, proc)
        _wait_for_cql(self.process, self.host, self.port, timeout)

    def env_value(self) -> str:
        return str(self.endpoint)

    def describe(self) -> str:
        return f"{self.endpoint} (Cassandra {self.version})"

    def details(self) -> str:
        rss = self.rss_kib()
        return f" rss={rss // 1024}MiB" if rss else ""

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
        process = Process("Cassandra", int(rec["pid"]), _MARKER, Path(rec["log"]))
        return cls(
            str(rec["host"]),
            int(rec["port"]),
            int(rec["storage_port"]),
            str(rec["version"]),
            Path(rec["dir"]),
            process,
        )


def _wait_for_cql(process: Process, host: str, port: int, timeout: float) -> None:
    """Wait until the node answers the probe query, over our CQL client and the driver."""
    last_probe_error = ""

    def answers() -> bool:
        nonlocal last_probe_error
        if not port_open(host, port, timeout=1.0):
            return False
        try:
            cassandra_release_version(host, port)
            driver_version = _driver_release_version(host, port)
        except Exception as exc:  # not ready yet (bootstrapping, schema...)
            last_probe_error = f"{type(exc).__name__}: {exc}"
            return False
        if driver_version is not None:
            log.info("cassandra-driver query ok (release_version %s)", driver_version)
        return True

    def late() -> str:
        detail = f" (last CQL probe error: {last_probe_error})" if last_probe_error else ""
        return (
            f"Cassandra (pid {process.pid}) did not answer CQL on {host}:{port} "
            f"within {timeout:.0f} s{detail}"
        )

    process.wait_ready(answers, timeout=timeout, interval=0.5, late=late, failure=_STARTUP_FAILURE)

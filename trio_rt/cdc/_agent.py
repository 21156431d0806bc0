"""Build and run the CDC agent (the JVM program in ``trio_rt/cdc/agent/``) beside a node.

Stdlib only, like the service launcher it builds on (``trio_rt.testing.services``): the
agent is compiled with Maven against the exact ``cassandra-all`` version the node runs (it
uses Cassandra's commit-log classes, which change between versions), once per version and
source digest, into ``<cache>/cdc-agent-<version>-<digest>/``; Maven's ``~/.m2`` caches the
jars, so a second build works offline. Compiling needs a JDK 17 (``javac``); running needs
the node's ``lib/`` directory (the jars ``ensure_cassandra_jars`` downloads, or a tarball
install's ``lib``).

`CdcAgent` runs one agent process under a small supervisor thread: the agent exits with
status 75 when the node's schema changed (it decodes with the schema it loaded at start) and
is started again at once; a crash is restarted after a pause. Its checkpoint lives in
`state_dir`, so a restarted agent goes on where its consumer last acknowledged.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from ..testing.services._base import (
    HOST,
    ServiceError,
    default_cache_dir,
    file_lock,
    free_ports,
    log,
    service_error,
    spawn,
    tail,
)
from ..testing.services._install import _apt_install, _apt_lock, find_java17, require_binary
from ..testing.services._jvm import _JAVA17_EXPORTS, _JAVA17_OPENS, CASSANDRA_VERSION

__all__ = [
    "AGENT_MAIN",
    "EXIT_SCHEMA_CHANGED",
    "CdcAgent",
    "agent_command",
    "ensure_agent_jar",
]

AGENT_MAIN = "trio_rt.cdc.agent.Agent"
#: The agent's exit status when the node's schema changed: start it again.
EXIT_SCHEMA_CHANGED = 75
#: Heap of the agent JVM: it holds the schema and one batch.
AGENT_HEAP = "256m"
AGENT_START_TIMEOUT = 120.0
_SOURCES = Path(__file__).resolve().parent / "agent"
_READY = re.compile(r"listening on (\S+):(\d+) ")


def _sources_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(_SOURCES.iterdir()):
        if path.suffix in (".java", ".xml"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _require_javac(java_home: Path) -> Path:
    """`java_home` if it is a JDK; else Debian's JDK 17 is installed (root only, as the
    launcher installs the JRE) into the same home."""
    if not (java_home / "bin" / "javac").is_file():
        with file_lock(_apt_lock()):
            _apt_install(["openjdk-17-jdk-headless"], "no javac (JDK 17) to build the CDC agent")
        if not (java_home / "bin" / "javac").is_file():
            raise ServiceError(
                f"installed openjdk-17-jdk-headless but {java_home}/bin/javac is missing"
            )
    return java_home


def ensure_agent_jar(version: str | None = None, *, java_home: Path | None = None) -> Path:
    """Build the agent against ``cassandra-all`` `version` (default: the launcher's), once;
    return the jar. Raises `ServiceError` with Maven's output when the build fails."""
    version = version or os.environ.get("TRIO_RT_CASSANDRA_VERSION") or CASSANDRA_VERSION
    home = default_cache_dir() / f"cdc-agent-{version}-{_sources_digest()}"
    jar = home / "trio-rt-cdc-agent.jar"
    if jar.is_file():
        return jar
    with file_lock(home.parent / f"cdc-agent-{version}.lock"):
        if jar.is_file():
            return jar
        mvn = require_binary("mvn", "maven")
        java_home = _require_javac(java_home or find_java17())
        build = home / "build"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(parents=True)
        for path in _SOURCES.iterdir():
            if path.suffix in (".java", ".xml"):
                shutil.copyfile(path, build / path.name)
        argv = [
            mvn, "-B", "-q", "-f", str(build / "pom.xml"), "package",
            f"-Dcassandra.version={version}", f"-DbuildDirectory={build / 'target'}",
        ]  # fmt: skip
        log.info("building the CDC agent against Cassandra %s with Maven", version)
        started = time.monotonic()
        res = subprocess.run(
            argv,
            cwd=build,
            env=dict(os.environ, JAVA_HOME=str(java_home)),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        built = build / "target" / "trio-rt-cdc-agent.jar"
        if res.returncode != 0 or not built.is_file():
            out = (res.stdout + res.stderr).strip().splitlines()[-40:]
            raise ServiceError(
                f"`{shlex.join(argv)}` failed (exit {res.returncode}):\n" + "\n".join(out)
            )
        shutil.copyfile(built, jar)
        shutil.copyfile(_SOURCES / "logback.xml", home / "logback.xml")
        log.info("CDC agent built in %.1f s: %s", time.monotonic() - started, jar)
    return jar


def agent_command(
    jar: Path,
    lib: Path,
    cassandra_yaml: Path,
    state_dir: Path,
    *,
    port: int,
    host: str = HOST,
    java: Path | None = None,
    heap: str = AGENT_HEAP,
    options: dict[str, str] | None = None,
) -> list[str]:
    """The command line of one agent run. `lib` holds the node's Cassandra jars;
    `options` adds agent flags (``{"poll-ms": "5", "window": "4"}``; docs/cdc.md)."""
    java = java or find_java17() / "bin" / "java"
    argv = [
        str(java),
        f"-Xmx{heap}",
        "-Xms64m",
        "-XX:+UseSerialGC",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.net.preferIPv4Stack=true",
        "-Dio.netty.tryReflectionSetAccessible=true",
        f"-Dcassandra.config={cassandra_yaml.resolve().as_uri()}",
        f"-Dlogback.configurationFile={jar.parent / 'logback.xml'}",
    ]
    for module in _JAVA17_EXPORTS:
        argv += ["--add-exports", f"{module}=ALL-UNNAMED"]
    for module in _JAVA17_OPENS:
        argv += ["--add-opens", f"{module}=ALL-UNNAMED"]
    argv += [
        "-cp",
        f"{jar}:{lib}/*",
        AGENT_MAIN,
        "--cassandra-yaml",
        str(cassandra_yaml),
        "--state-dir",
        str(state_dir),
        "--host",
        host,
        "--port",
        str(port),
    ]
    for name, value in (options or {}).items():
        argv += [f"--{name}", str(value)]
    return argv


class CdcAgent:
    """One agent beside one node, restarted when it exits (status 75: the schema changed, at
    once; anything else: after `restart_pause`), until `stop`.

    ``CdcAgent.start(lib, yaml, state_dir)`` builds the jar if needed, starts the agent and
    returns once it listens (`host`, `port`). `kill` sends SIGKILL to the running JVM (the
    supervisor starts a new one, as systemd would). Stdout and stderr go to
    ``<state_dir>/agent.log``.
    """

    def __init__(self, argv: list[str], host: str, port: int, state_dir: Path) -> None:
        self.argv = argv
        self.host = host
        self.port = port
        self.state_dir = state_dir
        self.log_path = state_dir / "agent.log"
        self.restart_pause = 0.5
        self.restarts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._starts_seen = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @classmethod
    def start(
        cls,
        lib: Path,
        cassandra_yaml: Path,
        state_dir: Path,
        *,
        version: str | None = None,
        port: int | None = None,
        options: dict[str, str] | None = None,
        timeout: float = AGENT_START_TIMEOUT,
        die_with_parent: bool = False,
    ) -> CdcAgent:
        java_home = find_java17()
        jar = ensure_agent_jar(version, java_home=java_home)
        state_dir.mkdir(parents=True, exist_ok=True)
        port = port if port is not None else free_ports(1)[0]
        argv = agent_command(
            jar,
            lib,
            cassandra_yaml,
            state_dir,
            port=port,
            java=java_home / "bin" / "java",
            options=options,
        )
        (state_dir / "agent-command.txt").write_text(shlex.join(argv) + "\n")
        agent = cls(argv, HOST, port, state_dir)
        # Only the first run can ask for it: restarts come from the supervisor thread, and
        # Linux ties the parent-death signal to the thread that started the process.
        agent._launch(die_with_parent)
        agent._thread = threading.Thread(target=agent._supervise, name="cdc-agent", daemon=True)
        agent._thread.start()
        try:
            agent.wait_ready(timeout)
        except BaseException:
            agent.stop()
            raise
        return agent

    @property
    def pid(self) -> int | None:
        proc = self.proc
        return None if proc is None else proc.pid

    def _ready_count(self) -> int:
        try:
            return len(_READY.findall(self.log_path.read_text(errors="replace")))
        except OSError:
            return 0

    def _launch(self, die_with_parent: bool = False) -> None:
        with self._lock:
            self._starts_seen = self._ready_count()
            self.proc = spawn(
                self.argv,
                log_path=self.log_path,
                cwd=self.state_dir,
                die_with_parent=die_with_parent,
            )

    def wait_ready(self, timeout: float = AGENT_START_TIMEOUT) -> None:
        """Until the running agent listens (its schema loaded); `ServiceError` after
        `timeout` or when it keeps failing."""
        deadline = time.monotonic() + timeout
        while self._ready_count() <= self._starts_seen:
            if self.restarts > 5 and self._ready_count() == 0:
                raise service_error("the CDC agent keeps failing to start", self.log_path)
            if time.monotonic() > deadline:
                raise service_error(
                    f"the CDC agent did not listen within {timeout:.0f} s", self.log_path
                )
            time.sleep(0.05)

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            proc = self.proc
            assert proc is not None
            code = proc.wait()
            if self._stopping.is_set():
                return
            if code == EXIT_SCHEMA_CHANGED:
                log.info("CDC agent: the schema changed, starting it again")
            else:
                log.warning(
                    "CDC agent exited with status %s; again in %.1f s", code, self.restart_pause
                )
                if self._stopping.wait(self.restart_pause):
                    return
            self.restarts += 1
            self._launch()

    def kill(self) -> int | None:
        """SIGKILL the running agent JVM (the supervisor starts another); its pid, None when
        none was running. `wait_ready` then waits for the next one."""
        with self._lock:
            proc = self.proc
            if proc is None or proc.poll() is not None:
                return None
            # What the killed one logged does not count for `wait_ready`.
            self._starts_seen = self._ready_count()
            os.kill(proc.pid, signal.SIGKILL)
            return proc.pid

    def stop(self, timeout: float = 20.0) -> None:
        """Stop supervising and the agent: SIGTERM, SIGKILL after `timeout`."""
        self._stopping.set()
        with self._lock:
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(timeout)

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

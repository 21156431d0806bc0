"""What every launched server shares: errors, paths, ports, processes, readiness, state file.

Every service module (:mod:`._redis`, :mod:`._redis_cluster`, :mod:`._cassandra`) builds on
this one; none of them imports another's private helpers.  Nothing here knows a protocol:
the readiness probes come from the service modules.

Names here carry no underscore because the module itself is private to the package; the
package's ``__init__`` re-exports the public ones.
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import dataclasses
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

#: The one logger of the launcher (the CLI prints its records to stderr).
log = logging.getLogger("trio_rt.testing.services")

HOST = "127.0.0.1"
STOP_TIMEOUT = 20.0
STATE_FILE = "services.json"
#: How often a start is tried again when a picked port was taken before the server bound it.
START_ATTEMPTS = 3

# trio_rt/testing/services/_base.py -> the checkout root (when this is a source checkout).
_REPO = Path(__file__).resolve().parents[3]

T = TypeVar("T")


class ServiceError(RuntimeError):
    """A service could not be installed, started, reached or stopped."""


class PortTaken(ServiceError):
    """A server could not bind a port that was free when it was picked (another process won
    the race); starting again on other ports is expected to work."""


# --------------------------------------------------------------------------- paths


def default_state_dir() -> Path:
    """``$TRIO_RT_SERVICES_DIR``, else ``<repo>/.services`` in a checkout, else ``./.services``."""
    env = os.environ.get("TRIO_RT_SERVICES_DIR")
    if env:
        return Path(env).expanduser().resolve()
    if (_REPO / "pyproject.toml").is_file() and (_REPO / "trio_rt").is_dir():
        return _REPO / ".services"
    return Path.cwd() / ".services"


def default_cache_dir() -> Path:
    """``$TRIO_RT_CACHE_DIR``, else ``$XDG_CACHE_HOME/trio_rt``, else ``~/.cache/trio_rt``."""
    env = os.environ.get("TRIO_RT_CACHE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "trio_rt"


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def tail(path: Path, lines: int = 60) -> str:
    """The last ``lines`` lines of a log (never raises: a read error becomes the text)."""
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


def service_error(message: str, log_path: Path | None, lines: int = 60) -> ServiceError:
    """A :class:`ServiceError` whose message ends with the tail of the server's log."""
    if log_path is not None:
        message += f"\n--- last {lines} lines of {log_path} ---\n{tail(log_path, lines)}"
    return ServiceError(message)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def remove_service_dir(path: Path) -> None:
    """Remove a server's directory, unless ``TRIO_RT_KEEP_SERVICE_DIRS`` is set."""
    if env_flag("TRIO_RT_KEEP_SERVICE_DIRS"):
        return
    shutil.rmtree(path, ignore_errors=True)


def parse_host_port(text: str, default_port: int) -> tuple[str, int]:
    """``"host:port"``, ``"[::1]:port"`` or ``"host"`` -> (host, port)."""
    text = text.strip()
    if text.startswith("["):  # [::1]:9042
        host, _, rest = text[1:].partition("]")
        return host, int(rest.lstrip(":") or default_port)
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    return host, int(port)


# ---------------------------------------------------------------------------- ports


def free_ports(count: int, *, bus_offset: int | None = None) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (picked by binding port 0).

    With ``bus_offset`` every returned port ``p`` also has ``p + bus_offset`` free (Redis
    Cluster's bus port).  A small race remains until the server binds: the server's
    readiness wait raises :class:`PortTaken` then, and :func:`start_retrying` tries again.
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


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def start_retrying(attempt: Callable[[], T], what: str) -> T:
    """``attempt()`` (pick ports, spawn, wait until ready) up to :data:`START_ATTEMPTS`
    times while it raises :class:`PortTaken`; any other error is raised at once."""
    for n in range(1, START_ATTEMPTS + 1):
        try:
            return attempt()
        except PortTaken:
            if n == START_ATTEMPTS:
                raise
            log.info("a port of %s was taken meanwhile; retrying", what)
    raise AssertionError("unreachable")


# ------------------------------------------------------------------- processes


def _parent_death_signal_setter() -> Callable[[], None]:
    # Look prctl up in the parent: the child (between fork and exec) must not dlopen.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def set_pdeathsig() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)

    return set_pdeathsig


def spawn(
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


def pid_alive(pid: int, marker: bytes | None = None) -> bool:
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


def pid_rss_kib(pid: int) -> int | None:
    """The resident size of ``pid`` in KiB (None when it cannot be read)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclasses.dataclass
class Process:
    """A server process: our child (``proc``) or, after a CLI restart, just a pid.

    ``marker`` is a byte string of the server's command line: a pid read back from the state
    file counts as this server only while its ``/proc/<pid>/cmdline`` contains it, so a
    recycled pid is never signalled.
    """

    name: str
    pid: int
    marker: bytes
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return pid_alive(self.pid, self.marker)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the process to end; False if it still runs."""
        if self.proc is not None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while pid_alive(self.pid, self.marker):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; raise ServiceError if it survives."""
        if not self.alive():
            if self.proc is not None:
                self.proc.wait()
            return
        log.info("stopping %s (pid %d)", self.name, self.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        if self.wait(timeout):
            return
        log.warning("%s (pid %d) ignored SIGTERM for %.0f s: SIGKILL", self.name, self.pid, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        if not self.wait(10.0):
            raise ServiceError(f"{self.name} (pid {self.pid}) survived SIGKILL")

    def wait_ready(
        self,
        probe: Callable[[], bool],
        *,
        timeout: float,
        interval: float,
        late: Callable[[], str],
        failure: re.Pattern[str] | None = None,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        """Poll ``probe()`` every ``interval`` s until it returns True.

        Raises :class:`ServiceError` (with the log's tail) when the process exits, when the
        end of its log matches ``failure``, or after ``timeout`` s (message ``late()``);
        :class:`PortTaken` when the log says a port was in use.  On any error, a
        KeyboardInterrupt included, the process is stopped first (SIGTERM, SIGKILL after
        ``stop_timeout`` s): a start that does not return a server leaves none running.
        Its directory is kept; the error message names the log in it.
        """

        def starting() -> None:
            if not self.alive():
                code = self.proc.returncode if self.proc is not None else "?"
                raise service_error(
                    f"{self.name} (pid {self.pid}) exited with code {code} during startup",
                    self.log_path,
                )
            if failure is not None and failure.search(tail(self.log_path, 400)):
                raise service_error(
                    f"{self.name} (pid {self.pid}) reported a startup failure", self.log_path
                )

        try:
            poll_until(
                probe,
                timeout=timeout,
                interval=interval,
                check=starting,
                late=lambda: service_error(late(), self.log_path),
            )
        except BaseException as exc:
            with contextlib.suppress(Exception):
                self.stop(stop_timeout)
            if isinstance(exc, ServiceError) and "Address already in use" in tail(
                self.log_path, 200
            ):
                raise PortTaken(str(exc)) from exc
            raise


def poll_until(
    probe: Callable[[], bool],
    *,
    timeout: float,
    interval: float,
    late: Callable[[], ServiceError],
    check: Callable[[], None] | None = None,
) -> None:
    """Call ``check()`` (it raises to give up) and ``probe()`` every ``interval`` s until
    ``probe()`` returns True; after ``timeout`` s raise the error ``late()`` builds."""
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        if probe():
            return
        if time.monotonic() >= deadline:
            raise late()
        time.sleep(interval)


# --------------------------------------------------------------------- services


class Service(abc.ABC):
    """What every launcher gives: start, probe, stop, and a record for the state file.

    Subclasses are dataclasses (one per service module); the CLI and the pytest plugin use
    only this interface.  ``with Subclass.start() as server:`` stops the server on exit.
    """

    #: Its key in the state file; ``--<kind with - for _>`` on the command line.
    kind: ClassVar[str]
    #: The environment variable that ``up`` exports (and the pytest fixtures read).
    env_var: ClassVar[str]

    @classmethod
    @abc.abstractmethod
    def start(cls, state_dir: Path | str | None = None, *, die_with_parent: bool = False) -> Self:
        """Start the server(s) under ``state_dir`` (default :func:`default_state_dir`) and
        return once they answer; raise :class:`ServiceError` (nothing left running) if not."""

    @abc.abstractmethod
    def alive(self) -> bool:
        """Every process of the service still runs."""

    @abc.abstractmethod
    def ping(self) -> bool:
        """The service answers its readiness probe now."""

    @abc.abstractmethod
    def stop(self, *, remove_dir: bool = True) -> None:
        """SIGTERM, SIGKILL after a grace period; then remove its directories unless told not
        to (or ``TRIO_RT_KEEP_SERVICE_DIRS`` is set).  Raises ServiceError if one survives."""

    @property
    @abc.abstractmethod
    def pids(self) -> list[int]: ...

    @abc.abstractmethod
    def env_value(self) -> str:
        """The value of :attr:`env_var` that points a client at this service."""

    def describe(self) -> str:
        """Where it listens, for ``status``."""
        return self.env_value()

    def details(self) -> str:
        """Extra facts for ``status`` about a running service (empty by default)."""
        return ""

    @abc.abstractmethod
    def to_record(self) -> dict[str, Any]:
        """A JSON-able record; :meth:`from_record` rebuilds the object in another process."""

    @classmethod
    @abc.abstractmethod
    def from_record(cls, rec: dict[str, Any]) -> Self: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclasses.dataclass
class StateFile:
    """``<state dir>/services.json``: the records of what ``up`` started, by kind."""

    dir: Path

    @property
    def path(self) -> Path:
        return self.dir / STATE_FILE

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise ``up`` and ``down`` runs on this state dir."""
        with file_lock(self.dir / ".lock"):
            yield

    def read(self) -> dict[str, dict[str, Any]]:
        """The records by kind (empty when there is no file); ServiceError if unreadable."""
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ServiceError(f"cannot read {self.path}: {exc}") from exc
        services = raw.get("services", {})
        return {str(kind): rec for kind, rec in services.items() if isinstance(rec, dict)}

    def write(self, records: dict[str, dict[str, Any]]) -> None:
        """Replace the file atomically; with no records, remove it."""
        if not records:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"services": records}, indent=2) + "\n")
        os.replace(tmp, self.path)

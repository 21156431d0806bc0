"""Installers: Debian packages through ``apt-get`` (root only) and finding a Java 17.

``apt-get`` runs only as root, never with ``TRIO_RT_NO_APT=1``, one at a time (a file lock
in the cache dir); otherwise a missing program raises :class:`ServiceError` with the command
to run.  The Cassandra jars (Maven) are installed by :mod:`._cassandra`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ._base import ServiceError, default_cache_dir, env_flag, file_lock, log

_apt_updated = False


def _apt_lock() -> Path:
    return default_cache_dir() / "apt.lock"


def _apt_install(packages: Sequence[str], why: str) -> None:
    """Install Debian packages (root only, non-interactive); raise with a hint otherwise.

    Callers hold the lock of :func:`_apt_lock`."""
    global _apt_updated
    cmd = "apt-get install -y --no-install-recommends " + " ".join(packages)
    if env_flag("TRIO_RT_NO_APT") or os.geteuid() != 0 or shutil.which("apt-get") is None:
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


def require_binary(name: str, package: str) -> str:
    """The path of program ``name``, installing Debian ``package`` first if it is missing."""
    path = shutil.which(name)
    if path is None:
        with file_lock(_apt_lock()):  # one of our apt-gets at a time
            path = shutil.which(name)
            if path is None:
                _apt_install([package], f"`{name}` is not installed")
                path = shutil.which(name)
        if path is None:
            raise ServiceError(f"installed {package} but `{name}` is still not on PATH")
    return path


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
    """Return a Java 17 home (never a newer JDK: Cassandra 5.0 cannot run on Java 24+).

    ``$TRIO_RT_JAVA_HOME``, when set, is the only candidate: anything but a Java 17 there
    raises :class:`ServiceError`.  Else the first Java 17 of ``$JAVA_HOME``,
    ``/usr/lib/jvm/*17*`` and ``java`` on ``PATH``; else (with ``install``) Debian's
    ``openjdk-17-jre-headless`` is installed.
    """
    chosen = os.environ.get("TRIO_RT_JAVA_HOME")
    if chosen:
        home = Path(chosen)
        if _java_major(home / "bin" / "java") != 17:
            raise ServiceError(f"TRIO_RT_JAVA_HOME={home} is not a Java 17 home")
        return home
    candidates: list[Path] = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]))
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
    if install:
        with file_lock(_apt_lock()):
            _apt_install(["openjdk-17-jre-headless"], "no Java 17 found for Cassandra")
        return find_java17(install=False)
    raise ServiceError("no Java 17 found (looked at $JAVA_HOME, /usr/lib/jvm, java on PATH)")

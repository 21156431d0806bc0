"""The peers in other languages: Node's ``ws`` and Go's gorilla/websocket, built into a cache.

Sources, committed with their lock files (the benchmark pins what it measures):

* ``node_ws/``: ``server.js`` on ``ws`` (exact version in ``package.json``, the tree in
  ``package-lock.json``). Built with ``npm ci`` (registry packages, lockfile integrity checked)
  in a copy of the directory under the cache; run as ``node --expose-gc <copy>/server.js``.
* ``go_gorilla/``: ``main.go`` on gorilla/websocket (``go.mod``/``go.sum``). Built with
  ``go build -mod=readonly`` (modules fetched through the Go module proxy, ``GOPROXY``,
  checked against ``go.sum``) into a binary under the cache.

Both speak the bench protocol of the Python servers (``welcome``, ``join_room`` ->
``room_joined``, ``bench_start`` -> broadcasts to the room "bench", ``READY <port>``) and the
connection benchmark's options (``--heartbeat``, ``--compression``, ``STATE`` on SIGUSR1); each
source file's header says how it broadcasts.

Building happens only when a harness sets up (`ExternalPeer.build`, called by
``benchmarks.table`` before its first run) or a launcher (``benchmarks.servers.node_ws``,
``benchmarks.servers.go_gorilla``) starts a server; importing this module does nothing.
The cache directory is ``$TRIO_RT_BENCH_CACHE``, else ``$XDG_CACHE_HOME/trio_rt-bench``, else
``~/.cache/trio_rt-bench``; it holds one directory per peer and digest of its sources, so an
edit rebuilds and an unchanged tree is reused. A build goes to a temporary directory renamed
into place when complete: concurrent builders (parallel tests) never see half a build.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SOURCES = Path(__file__).resolve().parent
BUILD_TIMEOUT = 600.0  # seconds; a cold npm or Go module download on a slow network


class PeerUnavailable(RuntimeError):
    """A tool the peer needs (node, npm, go) is not on PATH; the message says which."""


class BuildError(RuntimeError):
    """The build command failed; the message has the end of its output."""


def cache_root() -> Path:
    """Where built peers go (module docstring)."""
    explicit = os.environ.get("TRIO_RT_BENCH_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "trio_rt-bench"


def _run(argv: list[str], cwd: Path) -> None:
    result = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-3000:]
        raise BuildError(f"`{' '.join(argv)}` failed in {cwd} ({result.returncode}):\n{output}")


def _build_node(source: Path, out: Path) -> None:
    for name in ("package.json", "package-lock.json", "server.js"):
        shutil.copy2(source / name, out / name)
    _run(["npm", "ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund"], out)


def _build_go(source: Path, out: Path) -> None:
    # -mod=readonly: go.mod/go.sum are the truth, a missing or changed sum fails the build
    _run(["go", "build", "-mod=readonly", "-trimpath", "-o", str(out / "server"), "."], source)


@dataclass(frozen=True)
class ExternalPeer:
    """A peer server built from ``benchmarks/peers/<name>/``."""

    name: str
    tools: tuple[str, ...]  # on PATH: to build, and to run
    files: tuple[str, ...]  # the sources, digested (and all a build reads)
    _build: Callable[[Path, Path], None]
    _command: Callable[[Path], list[str]]
    _versions: Callable[[Path], dict[str, str]]

    @property
    def source(self) -> Path:
        return SOURCES / self.name

    def missing(self) -> str | None:
        """Why this peer cannot be built here (a tool missing from PATH), else None."""
        absent = [tool for tool in self.tools if shutil.which(tool) is None]
        if not absent:
            return None
        return (
            f"the {self.name} peer needs {' and '.join(self.tools)} on PATH"
            f" (not found: {', '.join(absent)})"
        )

    def digest(self) -> str:
        h = hashlib.sha256()
        for name in self.files:
            h.update(name.encode() + b"\0" + (self.source / name).read_bytes() + b"\0")
        return h.hexdigest()[:16]

    def build_dir(self) -> Path:
        return cache_root() / f"{self.name}-{self.digest()}"

    def is_built(self) -> bool:
        return (self.build_dir() / ".built").exists()

    def versions(self) -> dict[str, str]:
        """The toolchain's version and the pinned libraries (for the results' machine notes)."""
        try:
            return self._versions(self.source)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            return {"error": repr(exc)}

    def build(self, log: Callable[[str], None] | None = None) -> list[str]:
        """The command that starts the server (arguments follow it), after building it into
        the cache unless it is there already. Raises `PeerUnavailable` without the tools,
        `BuildError` when the build fails."""
        problem = self.missing()
        if problem:
            raise PeerUnavailable(problem)
        final = self.build_dir()
        if not self.is_built():
            if log is not None:
                log(f"building the {self.name} peer into {final} ...")
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
            try:
                self._build(self.source, tmp)
                (tmp / ".built").write_text(self.digest() + "\n")
                try:
                    tmp.rename(final)
                except OSError:
                    if not self.is_built():  # not a concurrent builder's finished copy
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return self._command(final)


def _tool_version(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()


def _node_versions(source: Path) -> dict[str, str]:
    lock = json.loads((source / "package-lock.json").read_text())
    return {
        "node": _tool_version(["node", "--version"]),
        **{
            path.removeprefix("node_modules/"): entry["version"]
            for path, entry in lock["packages"].items()
            if path.startswith("node_modules/")
        },
    }


def _go_versions(source: Path) -> dict[str, str]:
    requires = re.findall(r"^\s*([\w./-]+) (v\S+)", (source / "go.mod").read_text(), re.M)
    return {"go": _tool_version(["go", "env", "GOVERSION"]), **dict(requires)}


NODE_WS = ExternalPeer(
    "node_ws",
    ("node", "npm"),
    ("package.json", "package-lock.json", "server.js"),
    _build_node,
    lambda d: ["node", "--expose-gc", str(d / "server.js")],
    _node_versions,
)
GO_GORILLA = ExternalPeer(
    "go_gorilla",
    ("go",),
    ("go.mod", "go.sum", "main.go"),
    _build_go,
    lambda d: [str(d / "server")],
    _go_versions,
)
PEERS = {p.name: p for p in (NODE_WS, GO_GORILLA)}


def exec_server(peer: ExternalPeer) -> None:
    """A launcher's body: build `peer` if needed (messages to stderr), then replace this
    process with its server, passing on this process's arguments (``--host``, ``--port``...).
    The process id stays the same, so a harness measures the peer itself."""
    try:
        argv = peer.build(log=lambda text: print(text, file=sys.stderr, flush=True))
    except (PeerUnavailable, BuildError) as exc:
        raise SystemExit(f"{peer.name}: {exc}") from None
    sys.stdout.flush()
    os.execvp(argv[0], [*argv, *sys.argv[1:]])

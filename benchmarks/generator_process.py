"""The load generator as a harness's subprocess: started, then driven over its stdin/stdout
(``JOINED``, ``GO``, ``RESULT <json>``; see ``benchmarks.loadgen``)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence

from benchmarks.fanout import REPO_ROOT, LineReader


def start(args: Sequence[str], env: Mapping[str, str]) -> tuple[subprocess.Popen[str], LineReader]:
    """Starts ``python -m <args>`` (this interpreter) in the repository root with `env`, stdin
    and stdout piped as text; returns the process and a reader of its stdout named
    ``loadgen``. The caller stops the process (``benchmarks.fanout.stop``)."""
    generator = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert generator.stdout is not None and generator.stdin is not None
    return generator, LineReader(generator.stdout, "loadgen")


def go(generator: subprocess.Popen[str]) -> None:
    """Tells a generator that printed ``JOINED`` to start the broadcasts."""
    assert generator.stdin is not None
    generator.stdin.write("GO\n")
    generator.stdin.flush()

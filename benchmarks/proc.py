"""A harness's subprocess (a server or a load generator) with a line reader on its stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import psutil

from benchmarks.fanout import REPO_ROOT, LineReader


class Proc:
    """``python <args>`` (this interpreter) started in the repository root, with the
    repository on ``PYTHONPATH`` and stdin and stdout piped as text; `out` reads its lines, `ps`
    measures it. The caller stops it (``benchmarks.fanout.stop(proc.popen)``)."""

    def __init__(self, args: list[str], name: str) -> None:
        pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        self.popen = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": pythonpath},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.popen.stdout is not None
        self.out = LineReader(self.popen.stdout, name)
        self.ps = psutil.Process(self.popen.pid)

    def tell(self, command: str) -> None:
        """Writes `command` as one line to its stdin."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(command + "\n")
        self.popen.stdin.flush()

    def ask(self, command: str, answer: str, timeout: float) -> dict[str, Any]:
        """`tell` `command`, then wait for the line starting with `answer` and return the JSON
        after its first space."""
        self.tell(command)
        return json.loads(self.out.wait_for(answer, timeout).split(" ", 1)[1])  # type: ignore[no-any-return]

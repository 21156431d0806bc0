"""Run a benchmark server module with cyclic-GC accounting (used by ``profile_server``).

``python -m benchmarks.gc_probe MODULE [server args...]`` runs MODULE as ``__main__`` after
installing a ``gc.callbacks`` hook. SIGUSR1 resets the counters; SIGUSR2 prints
``GCSTATS {"0": [collections, CPU seconds, longest CPU seconds], "1": [...], "2": [...]}`` on
stdout. (A server that takes SIGUSR1 for itself, like ``conn_*``, overrides the reset: read two
reports and subtract.)
"""

from __future__ import annotations

import gc
import json
import runpy
import signal
import sys
import time
from types import FrameType
from typing import Any

_stats: dict[int, list[float]] = {0: [0, 0.0, 0.0], 1: [0, 0.0, 0.0], 2: [0, 0.0, 0.0]}
_started = 0.0


def _callback(phase: str, info: dict[str, Any]) -> None:
    global _started
    if phase == "start":
        _started = time.process_time()
    else:
        entry = _stats[info["generation"]]
        took = time.process_time() - _started
        entry[0] += 1
        entry[1] += took
        entry[2] = max(entry[2], took)


def _reset(signum: int, frame: FrameType | None) -> None:
    for entry in _stats.values():
        entry[0], entry[1], entry[2] = 0, 0.0, 0.0


def _report(signum: int, frame: FrameType | None) -> None:
    print("GCSTATS " + json.dumps({str(g): v for g, v in _stats.items()}), flush=True)


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m benchmarks.gc_probe MODULE [args...]")
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    gc.callbacks.append(_callback)
    signal.signal(signal.SIGUSR1, _reset)
    signal.signal(signal.SIGUSR2, _report)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

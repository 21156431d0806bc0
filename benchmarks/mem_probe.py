"""Run a benchmark server module with tracemalloc on (used by ``benchmarks.memory_profile``).

``python -m benchmarks.mem_probe OUTDIR MODULE [server args...]`` starts tracemalloc (25
frames), then runs MODULE as ``__main__``. Each SIGUSR2 runs ``gc.collect()``, writes a
tracemalloc snapshot and a count of the gc-tracked objects by type to OUTDIR
(``snap-<k>.tracemalloc``, ``types-<k>.json``) and prints ``SNAPSHOT <k>``.
"""

from __future__ import annotations

import collections
import gc
import json
import runpy
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

_count = 0
_outdir = Path(".")


def _snapshot(signum: int, frame: FrameType | None) -> None:
    global _count
    gc.collect()
    types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    snap = tracemalloc.take_snapshot()
    snap.dump(str(_outdir / f"snap-{_count}.tracemalloc"))
    (_outdir / f"types-{_count}.json").write_text(json.dumps(types))
    print(f"SNAPSHOT {_count} {len(gc.get_objects())}", flush=True)
    _count += 1


def main() -> None:
    global _outdir
    if len(sys.argv) < 3:
        raise SystemExit("usage: python -m benchmarks.mem_probe OUTDIR MODULE [args...]")
    _outdir = Path(sys.argv[1])
    _outdir.mkdir(parents=True, exist_ok=True)
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    tracemalloc.start(25)
    signal.signal(signal.SIGUSR2, _snapshot)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

"""Runs a benchmark server module from another checkout of trio_rt (``--tree``), so the table can
set trio_rt before a change beside trio_rt after it in the same run (``benchmarks.table --before``).

``python -m benchmarks.servers.other_tree --tree PATH --module benchmarks.servers.X [X's args]``:
PATH goes first on ``sys.path`` and every ``benchmarks``/``trio_rt`` module this process has
imported so far is forgotten, so both the server module and the trio_rt it imports come from
PATH. Only the standard library is imported here, for that reason.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--tree", type=Path, required=True)
    parser.add_argument("--module", required=True)
    ours, rest = parser.parse_known_args()
    tree = ours.tree.resolve()
    if not (tree / "trio_rt" / "__init__.py").is_file():
        parser.error(f"--tree {tree}: no trio_rt package there")
    for name in [n for n in sys.modules if n.partition(".")[0] in ("benchmarks", "trio_rt")]:
        del sys.modules[name]
    # an editable install's finder would hand out this checkout's modules the other tree lacks
    sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    sys.path.insert(0, str(tree))
    sys.argv = [ours.module, *rest]
    runpy.run_module(ours.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

"""Run Python as on a core install (``pip install trio_rt``, no extras), in this venv.

``python -m tests.core_only -m MODULE ARGS...`` or ``python -m tests.core_only -c CODE``: the
modules of every extra (redis, trio_asyncio, cassandra, jwt, cryptography, prometheus_client,
psutil) are made unimportable first (``sys.modules[name] = None``: importing one raises
ModuleNotFoundError, and `importlib.util.find_spec` says it is not there), then MODULE runs as
``__main__`` or CODE is executed. The real check, a fresh venv with the wheel and no extras,
is `.ci/install_smoke.py`; this one runs in every test run.
"""

from __future__ import annotations

import runpy
import sys

EXTRA_MODULES = (
    "redis",
    "hiredis",
    "trio_asyncio",
    "cassandra",
    "jwt",
    "cryptography",
    "prometheus_client",
    "psutil",
)


def block_extras() -> None:
    for name in EXTRA_MODULES:
        if name in sys.modules and sys.modules[name] is not None:
            raise RuntimeError(f"{name} was imported before it could be blocked")
        sys.modules[name] = None  # type: ignore[assignment]


def main() -> None:
    block_extras()
    flag, target, *rest = sys.argv[1:]
    if flag == "-c":
        sys.argv = ["-c", *rest]
        exec(compile(target, "<core_only>", "exec"), {"__name__": "__main__"})
    elif flag == "-m":
        sys.argv = [target, *rest]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        raise SystemExit("usage: python -m tests.core_only -m MODULE ARGS... | -c CODE")


if __name__ == "__main__":
    main()

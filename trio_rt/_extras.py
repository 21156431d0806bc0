"""The optional extras: which modules each brings, whether they are installed, and the
ImportError that names the extra to install when one is missing.

A module of its own (not `trio_rt/__init__.py`) so that the subpackages of an extra
(`trio_rt.redis`, `trio_rt.cassandra`) can raise that error without importing the package
that imports them: no import cycle (tests/test_import_graph.py).
"""

from __future__ import annotations

from importlib.util import find_spec

__all__ = ["EXTRAS", "extra_installed", "missing_extra_error"]

# The extras of pyproject.toml and the top-level modules each one brings (what must import).
EXTRAS: dict[str, tuple[str, ...]] = {
    "redis": ("hiredis",),
    "cassandra": ("cassandra",),
    "auth": ("jwt", "cryptography"),
    "metrics": ("prometheus_client",),
}


def extra_installed(extra: str) -> bool:
    """True when the modules of `extra` (a key of `EXTRAS`) can be imported; imports nothing."""
    return all(find_spec(module) is not None for module in EXTRAS[extra])


def missing_extra_error(what: str, extra: str, cause: BaseException | None = None) -> ImportError:
    """The ImportError for `what` when `extra` is not installed: it says what to install."""
    detail = f" ({cause})" if cause is not None else ""
    return ImportError(f"{what} needs the {extra!r} extra: pip install 'trio_rt[{extra}]'{detail}")

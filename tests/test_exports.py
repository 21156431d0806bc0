"""The public names of `trio_rt`: every name in ``__all__`` resolves when its extra is
installed; a core install (no extras) imports, ``from trio_rt import *`` works, and a name that
needs an extra raises ImportError saying which one to install."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import trio_rt

ROOT = Path(__file__).resolve().parent.parent
EXTRAS_IN_PYPROJECT = ("redis", "cassandra", "auth", "metrics")


def core_only(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a Python where no extra can be imported (tests/core_only.py)."""
    return subprocess.run(
        [sys.executable, "-m", "tests.core_only", "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_name_in_all_resolves_with_every_extra_installed() -> None:
    # The dev environment has every extra: __all__ is then the whole surface.
    assert set(trio_rt._LAZY) <= set(trio_rt.__all__)
    assert len(trio_rt.__all__) == len(set(trio_rt.__all__))
    for name in trio_rt.__all__:
        assert getattr(trio_rt, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from trio_rt import *", namespace)
    assert set(trio_rt.__all__) <= set(namespace)


def test_dir_lists_the_lazy_names() -> None:
    assert set(trio_rt._LAZY) <= set(dir(trio_rt))
    assert "WebSocketManager" in dir(trio_rt)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        trio_rt.nope  # noqa: B018


def test_the_table_matches_the_type_checkers_imports_and_the_extras() -> None:
    """One table drives __getattr__ and __dir__; the TYPE_CHECKING imports (for mypy) name the
    same modules, and every extra it names is one of pyproject.toml's."""
    tree = ast.parse((ROOT / "trio_rt" / "__init__.py").read_text())
    typed: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom):
                    for alias in stmt.names:
                        typed[alias.name] = "." * stmt.level + (stmt.module or "")
    assert typed == {name: module for name, (module, _) in trio_rt._LAZY.items()}
    assert {extra for _, extra in trio_rt._LAZY.values()} <= set(trio_rt._EXTRAS)
    assert set(trio_rt._EXTRAS) == set(EXTRAS_IN_PYPROJECT)
    pyproject = (ROOT / "pyproject.toml").read_text()
    for extra in EXTRAS_IN_PYPROJECT:
        assert f"\n{extra} = [" in pyproject, extra


def test_core_install_imports_star_and_names_the_missing_extra() -> None:
    result = core_only(
        """
import json
import trio_rt
from trio_rt import *  # must not need any extra
errors = {}
for name in sorted(trio_rt._LAZY):
    try:
        getattr(trio_rt, name)
    except ImportError as exc:
        errors[name] = str(exc)
for package in ("trio_rt.cassandra", "trio_rt.redis"):
    try:
        __import__(package)
    except ImportError as exc:
        errors[package] = str(exc)
print(json.dumps({"all": trio_rt.__all__, "star": "WebSocketManager" in dir(), "errors": errors}))
"""
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["star"]
    # __all__ holds only what imports here: the core names.
    assert not set(out["all"]) & set(trio_rt._LAZY)
    assert "WebSocketManager" in out["all"] and "RoomHistory" in out["all"]
    errors = out["errors"]
    for name, (module, extra) in trio_rt._LAZY.items():
        if module == "._engine.changes":
            continue  # imports without the driver (it runs on trio_rt.cassandra's Database)
        assert f"trio_rt.{name} needs the {extra!r} extra" in errors[name], name
        assert f"pip install 'trio_rt[{extra}]'" in errors[name], name
    assert "pip install 'trio_rt[cassandra]'" in errors["trio_rt.cassandra"]
    assert "trio_rt.redis needs the 'redis' extra" in errors["trio_rt.redis"]


def test_an_import_error_that_is_not_the_extra_is_not_disguised() -> None:
    """A missing module that belongs to no extra (a broken install) keeps its own message."""
    result = core_only(
        """
import sys
import trio_rt
sys.modules["trio_rt._engine.metrics"] = None
try:
    trio_rt.WebSocketMetrics
except ImportError as exc:
    print(type(exc).__name__, exc)
"""
    )
    assert result.returncode == 0, result.stderr
    assert "extra" not in result.stdout and "ModuleNotFoundError" in result.stdout


def test_the_redis_subpackage_exports_what_trio_rt_exports() -> None:
    """``trio_rt.redis`` holds the Redis edge; ``trio_rt.RedisBroker`` and friends are the same
    objects, and nothing else of the package's is public there."""
    import trio_rt.redis

    lazy_redis = {name for name, (module, _) in trio_rt._LAZY.items() if module == ".redis"}
    assert lazy_redis == {
        "RedisBroker",
        "RedisIdempotencyStore",
        "RedisPresence",
        "RedisRateLimiter",
        "RedisSequencer",
        "ServerRegistry",
    }
    errors = {"RedisError", "RedisReplyError", "RedisTimeout", "RedisUnavailable"}
    assert set(trio_rt.redis.__all__) == lazy_redis | {"RedisBrokerStats"} | errors
    for name in lazy_redis:
        assert getattr(trio_rt, name) is getattr(trio_rt.redis, name), name


def test_the_redis_subpackage_needs_neither_asyncio_nor_redis_py() -> None:
    """Importing and running the Redis components brings neither trio_asyncio (which patches
    asyncio for the whole process) nor redis-py: they are Trio-native. A fresh interpreter
    checks it, whatever the test run imported before."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, trio_rt, trio_rt.redis;"
            "trio_rt.RedisBroker, trio_rt.RedisSequencer, trio_rt.ServerRegistry;"
            "print(sorted(m for m in ('trio_asyncio', 'redis') if m in sys.modules))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

"""trio_rt/cassandra/ keeps the house rules of issue 13: no module over ~700 lines without a
written reason, and no reads or writes of another object's underscore attributes except where
cassandra-driver has no public API (said in a comment at that line)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "trio_rt" / "cassandra"
MODULES = sorted(PACKAGE.glob("*.py"))
MAX_LINES = 700
THIRD_PARTY = "no public API"  # what the comment at a driver reach-in says


def reach_ins(source: str) -> list[tuple[int, str]]:
    """(line, expression) of every ``x._name`` where x is not ``self``/``cls`` and the line
    (or the comment just above it) does not say the third party has no public API."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        near = " ".join(lines[max(0, node.lineno - 3) : node.lineno])
        if THIRD_PARTY not in near:
            found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_reach_into_another_objects_private_attributes(path: Path) -> None:
    assert reach_ins(path.read_text()) == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_modules_stay_small(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_the_checker_finds_a_reach_in() -> None:
    source = "def f(table, future):\n    table._values()\n    return future._paging_state\n"
    assert reach_ins(source) == [(2, "table._values"), (3, "future._paging_state")]
    commented = "def f(future):\n    # the driver has no public API for it\n    return future._x\n"
    assert reach_ins(commented) == []
    assert reach_ins("class A:\n    def f(self):\n        return self._x, self.__dict__\n") == []

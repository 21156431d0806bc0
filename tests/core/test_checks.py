"""One check for counts and durations (trio_rt/_core/checks.py), one wording, used everywhere."""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from trio_rt import MemoryStreamStore, Rate, RoomHistory
from trio_rt._core.checks import (
    int_problem,
    number_problem,
    require,
    require_positive_ints,
    require_positive_numbers,
)
from trio_rt._core.heartbeat import HeartbeatSchedule
from trio_rt._core.options import require_positive_ints as options_require_positive_ints
from trio_rt._core.outbox import Outbox
from trio_rt._core.rendezvous import rendezvous_owner
from trio_rt._core.reorder import OffsetRanges
from trio_rt._core.rooms import RoomRegistry

PACKAGE = Path(__file__).resolve().parents[2] / "trio_rt"


@pytest.mark.parametrize("good", [1, 2, 10**20])
def test_a_positive_int_passes(good: int) -> None:
    assert int_problem("n", good) is None


@pytest.mark.parametrize("bad", [0, -1, True, False, 1.0, 2.5, "3", None, math.inf])
def test_anything_else_is_not_a_positive_int(bad: object) -> None:
    assert int_problem("n", bad) == f"n must be a positive integer, not {bad!r}"


def test_int_options_none_and_other_minimums() -> None:
    assert int_problem("n", None, allow_none=True) is None
    assert int_problem("n", 0, allow_none=True) == "n must be a positive integer or None, not 0"
    assert int_problem("gap", 0, at_least=0) is None
    assert int_problem("gap", -1, at_least=0) == "gap must be an integer >= 0, not -1"
    assert int_problem("len", 15, at_least=16) == "len must be an integer >= 16, not 15"


@pytest.mark.parametrize("good", [1, 0.001, 2.5, 10**6])
def test_a_positive_finite_number_passes(good: float) -> None:
    assert number_problem("t", good) is None


@pytest.mark.parametrize("bad", [0, 0.0, -1.5, math.inf, -math.inf, math.nan, True, "1", None])
def test_anything_else_is_not_a_positive_finite_number(bad: object) -> None:
    assert number_problem("t", bad) == f"t must be a positive finite number, not {bad!r}"


def test_number_options_none_and_zero() -> None:
    assert number_problem("t", None, allow_none=True) is None
    assert number_problem("t", 0, at_least=0) is None
    assert number_problem("t", -0.5, at_least=0) == "t must be a finite number >= 0, not -0.5"
    assert number_problem("t", 0.5, at_least=1) == "t must be a finite number >= 1, not 0.5"
    assert (
        number_problem("t", math.inf, allow_none=True)
        == "t must be a positive finite number or None, not inf"
    )


def test_require_names_every_problem_in_one_value_error() -> None:
    require(None, None)
    with pytest.raises(ValueError, match=r"^a must be .*, not 0; c must be .*, not -1$"):
        require_positive_ints(a=0, b=1, c=-1)
    with pytest.raises(ValueError, match=r"^t must be a positive finite number, not nan$"):
        require_positive_numbers(s=1.5, t=math.nan)
    assert options_require_positive_ints is require_positive_ints  # the old import path


# Constructors that used to check by hand (and let some of these through): one rule now.
CONSTRUCTORS: list[tuple[Callable[..., object], dict[str, Any], str]] = [
    (Outbox, {"max_messages": True}, "max_messages must be a positive integer"),
    (Outbox, {"max_bytes": 0.5}, "max_bytes must be a positive integer"),
    (HeartbeatSchedule, {"interval": math.nan, "timeout": 1}, "interval must be a positive"),
    (HeartbeatSchedule, {"interval": 1, "timeout": math.inf}, "timeout must be a positive"),
    (OffsetRanges, {"bound": 0}, "bound must be a positive integer"),
    (Rate, {"limit": 5, "period": math.inf}, "period must be a positive finite number"),
    (RoomHistory, {"reorder_window": -1}, "reorder_window must be a finite number >= 0"),
    (RoomHistory, {"heal_timeout": 0}, "heal_timeout must be a positive finite number"),
    # inf was accepted, then every append failed (OverflowError computing the horizon)
    (MemoryStreamStore, {"retention": math.inf}, "retention must be a positive finite number"),
]


@pytest.mark.parametrize(("make", "kwargs", "message"), CONSTRUCTORS)
def test_constructors_share_the_check(
    make: Callable[..., object], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make(**kwargs)


def test_weights_and_room_sizes_share_the_check() -> None:
    with pytest.raises(ValueError, match="weight of 'a' must be a positive finite number"):
        rendezvous_owner("k", ["a", "b"], weights={"a": True})
    with pytest.raises(ValueError, match="max_users must be a positive integer or None"):
        RoomRegistry[str]().create("r", max_users=0)


# Where a hand-written positivity check may stay, and why. Remove a line once its file uses
# trio_rt/_core/checks.py (the names are files under trio_rt/).
ALLOWED = {
    # mirror upstream contracts and their wording (trio's receive_some, websockets' Assembler)
    "_transport/direct_stream.py": "trio's Stream.receive_some contract, checked per call",
    "_transport/assembler.py": "a copy of websockets' Assembler",
}
_HAND_ROLLED = re.compile(r"positive|non-negative|>= ?[01]\b|> ?0\b|at least 1\b")


def test_no_module_hand_rolls_a_positivity_check() -> None:
    found: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if name == "_core/checks.py" or name in ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
                text = ast.unparse(node.exc.args[0])
                if _HAND_ROLLED.search(text):
                    found.append(f"{name}:{node.lineno}: {text}")
    assert not found, "use trio_rt/_core/checks.py:\n" + "\n".join(found)

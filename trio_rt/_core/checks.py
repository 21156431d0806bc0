"""Argument checks shared by every constructor, sans-IO: one rule and one wording for counts,
sizes, durations and weights.

- A count or size is an ``int`` >= 1, or >= a stated minimum (`at_least`): `int_problem`.
- A duration or weight is a finite ``int`` or ``float`` > 0, or >= a stated minimum (0 where
  zero means "off" or "no wait"): `number_problem`.
- ``bool`` is refused everywhere although it is an ``int`` subclass: ``True`` passed as a
  count is a bug, not 1. NaN and infinities are refused for numbers.
- ``None`` passes only where the caller says it means something (``allow_none``).

The message always reads ``"<name> must be <what>, not <value>"``, e.g.
``"outbox_size must be a positive integer, not 0"`` or
``"heartbeat_interval must be a positive finite number or None, not inf"``.

The ``*_problem`` functions return that message (None when the value is fine), so that a caller
can collect every problem before raising: `ServerOptions` reports all of them at once. The
``require*`` functions raise ``ValueError``, for a wrong value and a wrong type alike (one
exception for every bad argument of a constructor).
"""

from __future__ import annotations

import math

__all__ = [
    "int_problem",
    "number_problem",
    "require",
    "require_positive_ints",
    "require_positive_numbers",
]


def int_problem(
    name: str, value: object, *, at_least: int = 1, allow_none: bool = False
) -> str | None:
    """None when `value` is an int >= `at_least` (or None, with `allow_none`); else the message."""
    if value is None and allow_none:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= at_least:
        return None
    what = "a positive integer" if at_least == 1 else f"an integer >= {at_least}"
    return _message(name, what, value, allow_none)


def number_problem(
    name: str, value: object, *, at_least: float | None = None, allow_none: bool = False
) -> str | None:
    """None when `value` is a finite int or float > 0 (>= `at_least` when given; or None, with
    `allow_none`); else the message."""
    if value is None and allow_none:
        return None
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > 0 if at_least is None else value >= at_least)
    ):
        return None
    what = "a positive finite number" if at_least is None else f"a finite number >= {at_least:g}"
    return _message(name, what, value, allow_none)


def _message(name: str, what: str, value: object, allow_none: bool) -> str:
    return f"{name} must be {what}{' or None' if allow_none else ''}, not {value!r}"


def require(*problems: str | None) -> None:
    """Raise ValueError naming every problem given (the Nones are the values that passed)."""
    found = [p for p in problems if p is not None]
    if found:
        raise ValueError("; ".join(found))


def require_positive_ints(**values: object) -> None:
    """Raise ValueError naming each of `values` that is not an int >= 1 (bool refused)."""
    require(*(int_problem(name, value) for name, value in values.items()))


def require_positive_numbers(**values: object) -> None:
    """Raise ValueError naming each of `values` that is not a finite number > 0 (bool refused)."""
    require(*(number_problem(name, value) for name, value in values.items()))

"""The reconnect schedule: exponential backoff with jitter. Sans-IO: arithmetic only, no clock,
no hidden randomness (the random generator is passed in)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from .._core.checks import int_problem, number_problem, require

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter. Pure arithmetic: no I/O, no clock, no hidden randomness.

    The base delay before retry ``n`` (0 for the first retry after a disconnect or after the
    first failed attempt) is ``min(max_delay, initial_delay * multiplier**n)``. Jitter scales it
    by a random factor in ``(1 - jitter, 1]``: with ``jitter=0.5`` a delay lies in
    ``(base/2, base]``; ``jitter=0`` makes the schedule deterministic; ``jitter=1`` is "full
    jitter". So ``max_delay`` is a true upper bound. The random numbers come from the
    ``random.Random`` passed in, so a seeded generator gives a reproducible schedule.

    Raises ``ValueError`` naming every setting out of range: the delays are finite numbers
    (``initial_delay >= 0``, ``max_delay >= initial_delay``), ``multiplier >= 1``, and
    ``jitter`` is within [0, 1].
    """

    initial_delay: float = 0.5
    max_delay: float = 20.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        initial = number_problem("initial_delay", self.initial_delay, at_least=0)
        require(
            initial,
            number_problem(
                "max_delay", self.max_delay, at_least=0 if initial else self.initial_delay
            ),
            number_problem("multiplier", self.multiplier, at_least=1),
            number_problem("jitter", self.jitter, at_least=0)
            or (None if self.jitter <= 1 else f"jitter must be at most 1, not {self.jitter!r}"),
        )

    def base_delay(self, retry: int) -> float:
        """The delay before retry number ``retry`` (0-based, an int), before jitter."""
        require(int_problem("retry", retry, at_least=0))
        if self.initial_delay == 0:
            return 0.0
        try:
            delay = self.initial_delay * float(self.multiplier) ** retry
        except OverflowError:  # forever-reconnecting clients reach huge retry numbers
            return self.max_delay
        return min(self.max_delay, delay)

    def delay(self, retry: int, rng: random.Random) -> float:
        """The jittered delay before retry number ``retry`` (0-based)."""
        base = self.base_delay(retry)
        if self.jitter == 0:
            return base
        return base * (1.0 - self.jitter * rng.random())

    def delays(self, rng: random.Random) -> Iterator[float]:
        """The infinite schedule: ``delay(0, rng), delay(1, rng), ...``."""
        retry = 0
        while True:
            yield self.delay(retry, rng)
            retry += 1

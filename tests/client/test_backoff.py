"""`Backoff`: the reconnect schedule's arithmetic (sans-IO: no clock, no hidden randomness)."""

from __future__ import annotations

import itertools
import random

import pytest

from trio_rt.client import Backoff


def test_backoff_base_schedule_doubles_up_to_max_delay() -> None:
    backoff = Backoff(initial_delay=0.5, max_delay=20.0, jitter=0)
    assert [backoff.base_delay(n) for n in range(9)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        20.0,
        20.0,
        20.0,
    ]
    rng = random.Random(1)
    assert list(itertools.islice(backoff.delays(rng), 7)) == [0.5, 1, 2, 4, 8, 16, 20]


def test_backoff_jitter_is_bounded_and_reproducible() -> None:
    backoff = Backoff(initial_delay=1.0, max_delay=8.0, jitter=0.5)
    first = list(itertools.islice(backoff.delays(random.Random(42)), 50))
    again = list(itertools.islice(backoff.delays(random.Random(42)), 50))
    assert first == again
    for n, delay in enumerate(first):
        base = backoff.base_delay(n)
        assert base * 0.5 < delay <= base
    assert len(set(first[10:])) > 1  # jitter actually varies the capped delays


def test_backoff_full_jitter_and_custom_multiplier() -> None:
    backoff = Backoff(initial_delay=0.1, max_delay=100.0, multiplier=3.0, jitter=1.0)
    assert [round(backoff.base_delay(n), 6) for n in range(4)] == [0.1, 0.3, 0.9, 2.7]
    rng = random.Random(7)
    for n in range(20):
        assert 0 <= backoff.delay(n, rng) <= backoff.base_delay(n)


def test_backoff_never_overflows_for_forever_reconnecting_clients() -> None:
    backoff = Backoff(initial_delay=0.5, max_delay=20.0)
    assert backoff.base_delay(10**6) == 20.0
    assert backoff.delay(10**6, random.Random(0)) <= 20.0
    assert Backoff(initial_delay=0, max_delay=5).base_delay(5000) == 0


@pytest.mark.parametrize(
    "options",
    [
        {"initial_delay": -1},
        {"initial_delay": 2, "max_delay": 1},
        {"max_delay": float("inf")},
        {"multiplier": 0.5},
        {"jitter": 1.5},
        {"jitter": -0.1},
    ],
)
def test_backoff_rejects_invalid_settings(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**options)
    with pytest.raises(ValueError):
        Backoff().base_delay(-1)

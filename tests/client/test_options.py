"""`WebSocketClient`'s option checks (trio_rt/client/_options.py): the one rule and wording of
trio_rt/_core/checks.py, every problem in one ValueError, before anything connects."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from websockets.exceptions import InvalidURI

from trio_rt.client import Backoff, WebSocketClient

URL = "ws://127.0.0.1:1/"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        # accepted before the checks were shared: a float, a bool or an infinity
        ({"max_attempts": 2.5}, "max_attempts must be a positive integer or None, not 2.5"),
        ({"queue_size": True}, "queue_size must be a positive integer, not True"),
        ({"receive_buffer": 0}, "receive_buffer must be a positive integer, not 0"),
        ({"max_size": 0}, "max_size must be a positive integer or None, not 0"),
        ({"ping_interval": math.inf}, "ping_interval must be a positive finite number or None"),
        ({"ping_timeout": -1}, "ping_timeout must be a positive finite number or None, not -1"),
        ({"open_timeout": math.nan}, "open_timeout must be a positive finite number or None"),
        ({"close_timeout": 0}, "close_timeout must be a positive finite number, not 0"),
        ({"refresh_margin": True}, "refresh_margin must be a finite number >= 0 or None, not True"),
        ({"url_index": 1}, "url_index must be None or an integer in [0, 1), not 1"),
        ({"overflow": "ignore"}, "overflow must be 'raise', 'drop_oldest' or 'wait'"),
        ({"receive_overflow": "wait", "ping_interval": None}, "receive_overflow='wait' needs"),
        ({"token": ""}, "token must be a non-empty string or a callable returning one"),
    ],
)
def test_a_bad_option_is_named(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        WebSocketClient(URL, **options)


def test_every_bad_option_is_named_at_once() -> None:
    with pytest.raises(ValueError) as info:
        WebSocketClient(URL, queue_size=0, close_timeout=-1, overflow="x")  # type: ignore[arg-type]
    assert str(info.value).count(" must be ") == 3


def test_urls_fail_at_once_with_their_own_errors() -> None:
    with pytest.raises(ValueError, match="non-empty sequence of URLs"):
        WebSocketClient([])
    with pytest.raises(TypeError, match="a URL must be a str"):
        WebSocketClient([URL, b"ws://x/"])  # type: ignore[list-item]
    with pytest.raises(InvalidURI):
        WebSocketClient("http://127.0.0.1:1/")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"initial_delay": -1}, "initial_delay must be a finite number >= 0, not -1"),
        ({"initial_delay": 2, "max_delay": 1}, "max_delay must be a finite number >= 2, not 1"),
        ({"max_delay": math.inf}, "max_delay must be a finite number >= 0.5, not inf"),
        ({"multiplier": 0.5}, "multiplier must be a finite number >= 1, not 0.5"),
        ({"jitter": 1.5}, "jitter must be at most 1, not 1.5"),
        ({"jitter": True}, "jitter must be a finite number >= 0, not True"),
    ],
)
def test_the_backoff_schedule_is_checked_too(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Backoff(**options)
    with pytest.raises(ValueError, match=re.escape(message)):
        WebSocketClient(URL, **options)

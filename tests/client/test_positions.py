"""Stream positions on the client's side and the duplicate rule (trio_rt/client/_positions.py),
sans-IO."""

from __future__ import annotations

import math

import pytest

from trio_rt.client import _positions as positions
from trio_rt.client._positions import SeenOffsets, StreamPositions, is_position, later


def test_seen_offsets_count_only_what_was_received(monkeypatch: pytest.MonkeyPatch) -> None:
    """No floor from a join position: an offset below everything received, never received
    itself (late: still being written when the client joined), is new."""
    seen = SeenOffsets("e")
    assert seen.add(7) and seen.add(9)
    assert not seen.add(9)  # received: a duplicate
    assert seen.add(3)  # below every received offset, never received: late, delivered
    assert seen.add(8) and not seen.add(8) and not seen.add(3)
    assert seen.floor == -math.inf


def test_seen_offsets_window_overflow_sets_the_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(positions, "RECENT_OFFSETS", 3)
    seen = SeenOffsets("e")
    assert all(seen.add(o) for o in (10, 12, 11))
    assert seen.floor == -math.inf and seen.add(5)  # the window overflows: 5 is forgotten
    assert seen.floor == 5 and not seen.add(5) and not seen.add(4)
    assert seen.add(13) and seen.floor == 10  # the smallest remembered leaves the window
    assert not seen.add(10) and not seen.add(11) and seen.add(14)


def at(offset: int, epoch: str = "e") -> dict[str, object]:
    return {"offset": offset, "epoch": epoch}


def test_what_a_position_is() -> None:
    assert is_position(at(0))
    assert not is_position({"offset": "1", "epoch": "e"})
    assert not is_position({"offset": 1})
    assert not is_position([1, "e"])


def test_later_never_moves_back_within_an_epoch() -> None:
    assert later(None, at(3)) == at(3)
    assert later(at(5), at(3)) == at(5)  # a late message
    assert later(at(5), at(7)) == at(7)
    assert later(at(5), at(2, "f")) == at(2, "f")  # a new epoch starts where it says


def test_received_drops_duplicates_and_delivers_late_offsets() -> None:
    streams = StreamPositions()
    assert streams.position("r") is None
    assert streams.received("r", at(4)) and streams.position("r") == at(4)
    assert not streams.received("r", at(4))  # a duplicate: nothing changes
    assert streams.received("r", at(2))  # late: delivered...
    assert streams.position("r") == at(4)  # ...without moving the position back
    assert streams.received("other", at(4))  # streams are apart


def test_reply_positions_mark_nothing_as_received() -> None:
    """A join's reply resets the position (resume exactly there); a renewal's reply and a
    history page move it forward only; none of them makes an offset a duplicate."""
    streams = StreamPositions()
    streams.received("r", at(9))
    streams.reset("r", at(6))
    assert streams.position("r") == at(6)
    assert streams.received("r", at(5)) and not streams.received("r", at(9))
    assert streams.position("r") == at(6)  # neither a late offset nor a duplicate moves it
    streams.catch_up("r", at(8))
    assert streams.position("r") == at(8)
    streams.catch_up("r", at(7))
    assert streams.position("r") == at(8)
    assert streams.received("r", at(8))
    streams.advance("r", at(12))
    assert streams.position("r") == at(12) and streams.received("r", at(12))


def test_a_new_epoch_starts_with_no_offsets() -> None:
    streams = StreamPositions()
    streams.received("s", at(3))
    streams.catch_up("s", at(1, "f"))
    assert streams.position("s") == at(1, "f")
    assert streams.received("s", at(3, "f"))  # offset 3 of the old epoch means nothing here
    streams.reset("s", at(0, "g"))
    assert streams.received("s", at(3, "g"))


def test_forget_drops_the_position_and_the_offsets() -> None:
    streams = StreamPositions()
    streams.received("r", at(3))
    streams.forget("r")
    assert streams.position("r") is None
    assert streams.received("r", at(3))

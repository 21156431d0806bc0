"""The suite's own arithmetic, without processes: what counts as lost, duplicated, out of
order, refetched; the proxy's frame counting; the harness's reading of filters."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from . import harness
from .harness import matches
from .ledger import Delivery, FrameCounter, Journaled, compare, repeats_after_kill

E = "e1"


def live(*offsets: int, epoch: str = E) -> list[Delivery]:
    return [Delivery(f"m{o}", o, epoch) for o in offsets]


def test_everything_once_in_order_is_clean() -> None:
    report = compare("c", "room", {"m1", "m2", "m3"}, live(1, 2, 3))
    assert report.counts.clean
    assert (report.counts.expected, report.counts.delivered) == (3, 3)


def test_a_missing_acknowledged_id_is_lost_and_named() -> None:
    report = compare("c", "room", {"m1", "m2", "m3"}, live(1, 3))
    assert report.counts.lost == 1
    assert report.lost_ids == ["m2"]
    assert report.counts.out_of_order == 0  # a gap is not disorder


def test_a_second_live_delivery_is_a_duplicate_not_disorder() -> None:
    report = compare("c", "room", {"m1", "m2"}, live(1, 2, 2))
    assert (report.counts.duplicated, report.counts.out_of_order) == (1, 0)
    assert report.duplicated == [("m2", 2, 2)]


def test_a_late_offset_is_out_of_order() -> None:
    report = compare("c", "room", {"m1", "m2", "m3"}, live(1, 3, 2))
    assert report.counts.out_of_order == 1
    assert report.out_of_order == [("m2", 2, 3)]
    assert report.counts.lost == 0


def test_a_page_entry_the_client_had_is_an_overlap_and_a_new_one_is_refetched() -> None:
    page = [Delivery("m1", 1, E, live=False), Delivery("m2", 2, E, live=False)]
    report = compare("c", "room", {"m1", "m2"}, [*live(1), *page])
    assert report.counts.clean
    assert report.counts.refetched == 1


def test_a_live_delivery_after_the_page_that_had_it_is_a_duplicate() -> None:
    page = [Delivery("m2", 2, E, live=False)]
    report = compare("c", "room", {"m1", "m2"}, [*live(1), *page, *live(2)])
    assert report.counts.duplicated == 1


def test_unacknowledged_deliveries_are_extra_never_an_error() -> None:
    report = compare("c", "room", {"m1"}, live(1, 2))
    assert report.counts.clean
    assert report.counts.extra == 1


def test_a_new_epoch_restarts_the_order() -> None:
    deliveries = [*live(5, 6), *live(1, 2, epoch="e2")]
    report = compare("c", "room", {"m5", "m6", "m1", "m2"}, deliveries)
    assert report.counts.clean
    assert report.counts.epoch_changes == 1


def frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes([0x81, n]) + payload
    if n < 65536:
        return bytes([0x81, 126]) + struct.pack("!H", n) + payload
    return bytes([0x81, 127]) + struct.pack("!Q", n) + payload


def test_frame_counter_skips_the_http_response_and_counts_split_frames() -> None:
    stream = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
    stream += frame(b"a" * 10) + frame(b"b" * 300) + frame(b"c" * 70000)
    counter = FrameCounter()
    for i in range(0, len(stream), 7):  # any split
        counter.feed(stream[i : i + 7])
    assert counter.frames == 3
    counter.feed(frame(b"d")[:1])
    assert counter.frames == 3


def test_the_harness_reads_filters_like_the_protocol_says() -> None:
    row = {"category": "c1", "score": 40, "writer": "w2"}
    assert matches({"category": "c1"}, row)
    assert matches({"category": {"in": ["c0", "c1"]}}, row)
    assert matches({"score": {"gte": 40, "lt": 41}}, row)
    assert not matches({"score": {"gt": 40}}, row)
    assert not matches({"writer": "w2", "score": {"lt": 40}}, row)
    assert not matches({"missing": {"gte": 0}}, row)


async def test_a_run_with_too_few_acknowledged_sends_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """0 of 900 acknowledged (every write timed out) proves nothing: the record fails rather
    than reporting 0 of 0 delivered as clean."""
    monkeypatch.setattr(harness, "ARTIFACTS", tmp_path)
    empty = harness.Record("t", "empty", {}, harness.Timeline(), unanswered=900, settled="complete")
    with pytest.raises(AssertionError, match="only 0 of 900 sends were acknowledged"):
        empty.finish()
    busy = harness.Record(
        "t", "busy", {}, harness.Timeline(), acknowledged=572, refused=388, settled="complete"
    )
    busy.finish()  # Redis down 8 s: 60 % acknowledged is a real run


def journal(offsets: list[int], saved: int | None) -> list[Journaled]:
    """A life of a watcher handed `offsets`, having stored `saved` when handed the last."""
    return [Journaled(d, None) for d in live(*offsets[:-1])] + [
        Journaled(live(offsets[-1])[0], None if saved is None else (saved, E))
    ]


def test_a_killed_watchers_unstored_tail_repeated_at_the_next_life_head_is_allowed() -> None:
    counted, repeats = repeats_after_kill([journal([1, 2, 3, 4, 5], 3), journal([4, 5, 6], 5)])
    assert [d.offset for d in repeats] == [4, 5]
    assert compare("w", "watch", {f"m{o}" for o in range(1, 7)}, counted).counts.clean


def test_a_repeat_of_a_stored_change_still_counts() -> None:
    # The watcher had stored 4 when handed 5: resuming at 4 is a defect, not at-least-once.
    counted, repeats = repeats_after_kill([journal([1, 2, 3, 4, 5], 4), journal([4, 5, 6], 5)])
    assert repeats == []
    assert compare("w", "watch", {f"m{o}" for o in range(1, 7)}, counted).counts.duplicated == 2


def test_a_repeat_not_at_the_next_lifes_head_still_counts() -> None:
    counted, repeats = repeats_after_kill([journal([1, 2, 3, 4, 5], 3), journal([6, 5], 6)])
    assert repeats == []
    assert compare("w", "watch", {f"m{o}" for o in range(1, 7)}, counted).counts.duplicated == 1


def test_a_life_that_stored_nothing_excuses_no_repeat() -> None:
    counted, repeats = repeats_after_kill([journal([1, 2], None), journal([1, 2, 3], None)])
    assert repeats == []
    assert compare("w", "watch", {"m1", "m2", "m3"}, counted).counts.duplicated == 2


def test_the_watch_journal_splits_lives_and_skips_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "watch-s0.jsonl"
    line = '{{"id": "m{0}", "position": {{"offset": {0}, "epoch": "e1"}}, "saved": {1}}}\n'
    path.write_text(
        '\n{"life": 1}\n'
        + line.format(1, "null")
        + line.format(2, '{"offset": 1, "epoch": "e1"}')
        + '{"id": "m3", "posi'  # killed mid-write
        + '\n{"life": 2}\n'
        + line.format(2, '{"offset": 1, "epoch": "e1"}')
    )
    lives = harness.read_watch_log(path)
    assert [[j.delivery.offset for j in life] for life in lives] == [[1, 2], [2]]
    assert lives[0][1].saved == (1, E)
    counted, repeats = repeats_after_kill(lives)
    assert [d.offset for d in repeats] == [2]
    assert [d.offset for d in counted] == [1, 2]

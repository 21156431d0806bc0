"""The CDC agent's wire format, sans-IO (trio_rt/cdc/_wire.py): parsing, framing, change ids."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_rt.cdc import (
    AgentBatch,
    AgentHello,
    AgentStats,
    LineReader,
    WireError,
    change_id,
    encode_ack,
    parse_message,
)
from trio_rt.cdc._wire import AgentRefused

BATCH = {
    "type": "batch",
    "seq": 3,
    "segment": 17,
    "position": 4096,
    "changes": [
        {
            "keyspace": "app",
            "table": "posts",
            "op": "update",
            "ts": 1_700_000_000_000_001,
            "key": {"id": 1},
            "cells": {"title": "x", "body": None},
            "partial": {"tags": {"add": ["a"], "remove": []}},
            "ttl": 60,
            "expires": 1_700_000_060,
        },
        {
            "keyspace": "app",
            "table": "posts",
            "op": "range_delete",
            "ts": 5,
            "key": {"id": 2},
            "range": {"start": {"values": {"ck": 1}, "inclusive": True}, "end": {"values": {}}},
        },
    ],
}


def test_a_batch_parses_into_changes() -> None:
    message = parse_message(json.dumps(BATCH))
    assert isinstance(message, AgentBatch)
    assert (message.seq, message.segment, message.position) == (3, 17, 4096)
    update, deletion = message.changes
    assert update.kind == "write" and update.cells == {"title": "x", "body": None}
    assert (update.ttl, update.expires, update.partial["tags"]["add"]) == (60, 1_700_000_060, ["a"])
    assert deletion.kind == "range_delete" and deletion.range is not None


def test_hello_stats_and_refusal_parse() -> None:
    hello = parse_message(
        b'{"type":"hello","protocol":1,"node":"n:7000","cassandra":"5.0.9","checkpoint":{}}'
    )
    assert isinstance(hello, AgentHello) and hello.node == "n:7000"
    assert hello.resend_until is None  # an agent that does not say: every batch is checked
    hello = parse_message(
        b'{"type":"hello","protocol":1,"node":"n","cassandra":"5","checkpoint":{},'
        b'"resend_until":{"segment":7,"position":90}}'
    )
    assert isinstance(hello, AgentHello) and hello.resend_until == (7, 90)
    stats = parse_message(
        json.dumps(
            {
                "type": "stats",
                "cdc_raw_bytes": 10,
                "cdc_total_space": 100,
                "segments": 1,
                "alert": True,
                "skipped_unknown_table": 0,
                "errors": 0,
                "checkpoint": {"segment": 1, "position": 2},
            }
        )
    )
    assert isinstance(stats, AgentStats) and stats.alert and stats.skipped_undecodable == 0
    # An older agent sends no reading counters: 0.
    assert (stats.listings, stats.segment_opens, stats.reads, stats.checkpoint_writes) == (0,) * 4
    reading = parse_message(
        json.dumps(
            {
                "type": "stats",
                "cdc_raw_bytes": 10,
                "cdc_total_space": 100,
                "segments": 1,
                "alert": False,
                "skipped_unknown_table": 0,
                "skipped_undecodable": 1,
                "errors": 0,
                "listings": 3,
                "segment_opens": 2,
                "reads": 40,
                "checkpoint_writes": 7,
                "checkpoint": {"segment": 1, "position": 2},
            }
        )
    )
    assert isinstance(reading, AgentStats)
    assert (reading.skipped_undecodable, reading.listings, reading.segment_opens) == (1, 3, 2)
    assert (reading.reads, reading.checkpoint_writes) == (40, 7)
    assert parse_message('{"type":"error","message":"busy"}') == AgentRefused("busy")


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[]",
        b'{"type":"what"}',
        b'{"type":"hello","protocol":2,"node":"n","cassandra":"5","checkpoint":{}}',
        json.dumps({**BATCH, "seq": "3"}).encode(),
        json.dumps({**BATCH, "changes": [{**BATCH["changes"][0], "op": "merge"}]}).encode(),
        json.dumps({**BATCH, "changes": [{**BATCH["changes"][1], "range": None}]}).encode(),
        json.dumps({**BATCH, "changes": [{**BATCH["changes"][0], "ts": True}]}).encode(),
    ],
)
def test_what_does_not_follow_the_format_is_refused(line: bytes) -> None:
    with pytest.raises(WireError):
        parse_message(line)


@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=20), st.data()
)
def test_lines_come_out_whole_however_the_bytes_are_split(
    lines: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    reader = LineReader()
    out: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += reader.feed(stream[start:end])
    assert out == lines


def test_a_line_without_end_past_the_limit_is_an_error() -> None:
    reader = LineReader(max_line=10)
    assert reader.feed(b"0123456789\n") == [b"0123456789"]
    with pytest.raises(WireError):
        reader.feed(b"0123456789a")


def test_an_ack_is_one_line() -> None:
    assert json.loads(encode_ack(42)) == {"type": "ack", "seq": 42}


def test_change_ids_ignore_key_order_and_tell_kinds_times_and_ranges_apart() -> None:
    base = change_id("app", "posts", "write", 10, {"a": 1, "b": "x"})
    assert base == change_id("app", "posts", "write", 10, {"b": "x", "a": 1})
    others = {
        change_id("app", "posts", "delete", 10, {"a": 1, "b": "x"}),
        change_id("app", "posts", "write", 11, {"a": 1, "b": "x"}),
        change_id("app", "other", "write", 10, {"a": 1, "b": "x"}),
        change_id("app", "posts", "write", 10, {"a": 2, "b": "x"}),
        change_id("app", "posts", "range_delete", 10, {"a": 1}, {"start": {}}),
        change_id("app", "posts", "range_delete", 10, {"a": 1}, {"end": {}}),
    }
    assert base not in others and len(others) == 6

"""The bounded outbox and slow-consumer policies without sockets (sans-IO)."""

from __future__ import annotations

import pytest

from trio_rt._core.outbox import Offer, OutboundMessage, Outbox, SlowConsumerPolicy


def msg(n: int = 10) -> OutboundMessage:
    return OutboundMessage(b"x" * n)


def test_fifo_and_take_all() -> None:
    box = Outbox(max_messages=10)
    a, b = msg(), msg()
    assert box.offer(a) is Offer.QUEUED
    assert box.offer(b) is Offer.QUEUED
    assert len(box) == 2 and box.queued_bytes == 20
    assert box.take_all() == [a, b]
    assert len(box) == 0 and box.queued_bytes == 0


def test_disconnect_policy_reports_overflow_and_keeps_bound() -> None:
    box = Outbox(max_messages=2)
    box.offer(msg())
    box.offer(msg())
    assert box.offer(msg()) is Offer.OVERFLOW
    assert len(box) == 2


def test_byte_bound() -> None:
    box = Outbox(max_messages=100, max_bytes=25)
    assert box.offer(msg(10)) is Offer.QUEUED
    assert box.offer(msg(10)) is Offer.QUEUED
    assert box.offer(msg(10)) is Offer.OVERFLOW
    # one message bigger than the whole bound still goes through an empty outbox
    big = Outbox(max_bytes=5)
    assert big.offer(msg(50)) is Offer.QUEUED


def test_drop_newest() -> None:
    box = Outbox(max_messages=1, policy=SlowConsumerPolicy.DROP_NEWEST)
    first = msg()
    box.offer(first)
    assert box.offer(msg()) is Offer.DROPPED
    assert box.take_all() == [first]
    assert box.dropped == 1


def test_drop_oldest() -> None:
    box = Outbox(max_messages=2, policy=SlowConsumerPolicy.DROP_OLDEST)
    a, b, c = msg(), msg(), msg()
    box.offer(a)
    box.offer(b)
    assert box.offer(c) is Offer.DROPPED
    assert box.take_all() == [b, c]
    assert box.dropped == 1


def test_seal_keeps_queue_close_drops_it() -> None:
    box = Outbox()
    a = msg()
    box.offer(a)
    box.seal()
    assert box.offer(msg()) is Offer.CLOSED
    assert box.closed and not box.aborted
    assert box.take_all() == [a]
    box.offer(a)
    box.close()
    assert box.aborted and len(box) == 0


def test_push_front_for_welcome() -> None:
    box = Outbox(max_messages=1)
    a, w = msg(), msg()
    box.offer(a)
    box.push_front(w)
    assert box.take_all() == [w, a]


def test_frame_is_computed_once_and_shared() -> None:
    m = OutboundMessage(b"hello")
    assert m.frame is m.frame
    assert m.frame == b"\x81\x05hello"


def test_bad_bounds() -> None:
    with pytest.raises(ValueError):
        Outbox(max_messages=0)
    with pytest.raises(ValueError):
        Outbox(max_bytes=0)
    with pytest.raises(ValueError):
        Outbox(policy="sometimes")  # type: ignore[arg-type]

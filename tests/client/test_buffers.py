"""The client's bounded buffers and their overflow policies (trio_rt/client/_buffers.py), and
`Completion`, without sockets. tests/client/test_client.py checks the same policies through
`WebSocketClient.send()` and a real server."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_rt.client import ClientStats
from trio_rt.client._buffers import (
    DATA,
    JOIN,
    LEAVE,
    UNSUBSCRIBE,
    ClientOutbox,
    Item,
    ReceiveBuffer,
)
from trio_rt.client._completion import Completion
from trio_rt.client._sync import wait_for

# -- the outbox ----------------------------------------------------------------------------------


def test_a_full_outbox_waits_while_connected_else_follows_the_policy() -> None:
    for policy in ("raise", "drop_oldest", "wait"):
        outbox = ClientOutbox(1, policy, ClientStats())
        assert outbox.when_full(connected=True) == "wait"  # backpressure from the socket
        assert outbox.when_full(connected=False) == policy


def test_only_application_messages_count_towards_the_bound() -> None:
    outbox = ClientOutbox(2, "raise", ClientStats())
    outbox.put(Item(JOIN, room="r", waiter=Completion()))
    outbox.put_message("a")
    assert not outbox.full and len(outbox) == 2
    outbox.put_message("b")
    assert outbox.full and outbox.queued == 2


def test_drop_oldest_discards_the_oldest_message_and_settles_it() -> None:
    stats = ClientStats()
    outbox = ClientOutbox(2, "drop_oldest", stats)
    outbox.put(Item(JOIN, room="r", waiter=Completion()))
    outbox.put_message("a")
    outbox.put_message("b")
    outbox.drop_oldest()
    assert [item.text for item in outbox if item.kind == DATA] == ["b"]
    assert outbox.queued == 1 and stats.dropped == 1
    assert outbox.settled(1) and not outbox.settled(2)  # flush() no longer waits for "a"


def test_flush_waits_for_each_message_to_be_written_or_lost() -> None:
    stats = ClientStats()
    outbox = ClientOutbox(5, "raise", stats)
    for text in ("a", "b"):
        outbox.put_message(text)
    target = outbox.enqueued_seq
    first = outbox.pop()
    outbox.settle(first, written=True)
    assert not outbox.settled(target)
    second = outbox.pop()
    outbox.settle(second, written=False)  # the connection broke during the write: lost
    assert outbox.settled(target)
    assert (stats.sent, stats.lost, outbox.queued) == (1, 1, 0)


def test_the_clients_own_messages_go_first_without_delaying_flush() -> None:
    outbox = ClientOutbox(5, "raise", ClientStats())
    outbox.put_message("app")
    outbox.put_message_first("refetch")
    outbox.put_first(Item(UNSUBSCRIBE, room="s1"))
    assert [item.kind for item in outbox] == [UNSUBSCRIBE, DATA, DATA]
    assert [item.text for item in outbox][1:] == ["refetch", "app"]
    assert outbox.queued == 2
    outbox.pop()
    outbox.settle(outbox.pop(), written=True)  # the refetch
    assert not outbox.settled(outbox.enqueued_seq)


def test_a_connection_end_keeps_messages_and_joins() -> None:
    outbox = ClientOutbox(5, "raise", ClientStats())
    leave = Completion()
    join = Item(JOIN, room="r", waiter=Completion())
    outbox.put(Item(LEAVE, room="x", waiter=leave))
    outbox.put(Item(UNSUBSCRIBE, room="s1"))
    outbox.put(join)
    outbox.put_message("m")
    outbox.connection_ended()
    assert leave.done and not leave.failed
    assert [item.kind for item in outbox] == [JOIN, DATA]


def test_discard_at_close_counts_what_was_queued() -> None:
    stats = ClientStats()
    outbox = ClientOutbox(5, "raise", stats)
    leave = Completion()
    outbox.put(Item(LEAVE, room="x", waiter=leave))
    outbox.put_message("a")
    outbox.put_message("b")
    outbox.discard()
    assert stats.discarded == 2 and not outbox and outbox.queued == 0
    assert leave.done and outbox.settled(outbox.enqueued_seq)


# -- the receive buffer --------------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "mark"), [("reconnect", 2), ("wait", 3)])
def test_a_full_receive_buffer_is_reported_and_keeps_everything(policy: str, mark: int) -> None:
    buffer = ReceiveBuffer(4, policy, ClientStats())  # type: ignore[arg-type]
    assert [buffer.put({"type": "m", "n": n}) for n in range(4)] == [False, False, False, True]
    assert len(buffer) == 4 and buffer.room_mark == mark and buffer.behind
    while len(buffer) > mark:
        buffer.pop()
    assert not buffer.behind


def test_drop_oldest_never_reports_full() -> None:
    stats = ClientStats()
    buffer = ReceiveBuffer(2, "drop_oldest", stats)
    assert not any(buffer.put({"type": "m", "n": n}) for n in range(5))
    assert [buffer.pop()["n"], buffer.pop()["n"]] == [3, 4]
    assert stats.receive_dropped == 3


def test_a_closed_receive_buffer_takes_nothing() -> None:
    buffer = ReceiveBuffer(2, "reconnect", ClientStats())
    buffer.closed = True
    assert not buffer.put({"type": "m"}) and len(buffer) == 0


# -- Completion ----------------------------------------------------------------------------------


def test_a_completion_settles_once_and_raises_a_fresh_error_each_time() -> None:
    calls: list[str] = []
    done = Completion()
    done.add_done_callback(lambda: calls.append("first"))
    done.fail(lambda: ValueError("no"))
    done.succeed()  # too late: the first outcome stays
    done.add_done_callback(lambda: calls.append("late"))  # called at once
    assert done.done and done.failed and calls == ["first", "late"]
    errors = []
    for _ in range(2):
        with pytest.raises(ValueError, match="no") as info:
            done.check()
        errors.append(info.value)
    assert errors[0] is not errors[1]


async def test_wait_for_returns_or_raises_the_outcome() -> None:
    done = Completion()
    with trio.move_on_after(0):
        await wait_for(done)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for, done)
        await trio.testing.wait_all_tasks_blocked()
        done.succeed()
    await wait_for(done)  # settled: returns (after a checkpoint)
    failed = Completion()
    failed.fail(lambda: KeyError("k"))
    with pytest.raises(KeyError):
        await wait_for(failed)

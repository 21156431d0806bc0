"""Direct writes and corking: frames never reorder, bursts share a write, quiet sends don't wait.

The DirectStream tests use a real socket pair; the FlushQueue tests use plain objects in
place of connections (what it calls is one method). No test depends on timing: what is
checked is what the peer received, and in what order, after the scheduler settled.
"""

from __future__ import annotations

import math
import socket
from typing import Any

import pytest
import trio
import trio.testing

from trio_rt import Connection
from trio_rt._engine.flush import FlushQueue
from trio_rt._engine.sockets import (
    BROKEN,
    BUSY,
    CORKED,
    CORKED_FULL,
    PARTIAL,
    WROTE,
    DirectWrites,
)
from trio_rt._transport.direct_stream import CORK_MAX_BYTES, DirectStream

from ..conftest import client


def stream_pair() -> tuple[DirectStream, socket.socket]:
    a, b = socket.socketpair()
    b.setblocking(False)
    return DirectStream(trio.SocketStream(trio.socket.from_stdlib_socket(a))), b


def received(peer: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


async def test_the_engine_sees_direct_writes_through_its_seam() -> None:
    # Connection checks `isinstance(ws.stream, DirectWrites)` once when it opens: a
    # DirectStream that stopped matching the engine's protocol would silently lose direct
    # writes (every send through the writer task).
    stream, peer = stream_pair()
    with peer:
        assert isinstance(stream, DirectWrites)
        assert not isinstance(stream.inner, DirectWrites)  # plain trio stream: the writer
        await stream.aclose()


async def test_corked_frames_wait_for_the_flush_and_go_out_in_order() -> None:
    stream, peer = stream_pair()
    with peer:
        assert not stream.corking
        assert stream.cork(b"one,") is False  # under CORK_MAX_BYTES: wait for the flush
        assert stream.corking  # the caller arranges a flush
        assert stream.cork(b"two,") is False
        assert received(peer) == b""
        assert stream.flush()
        assert received(peer) == b"one,two,"
        assert stream.flush()  # nothing corked: nothing written
        assert received(peer) == b""
        await stream.aclose()


async def test_every_other_write_sends_the_corked_frames_first() -> None:
    stream, peer = stream_pair()
    with peer:
        stream.cork(b"A")
        await stream.send_all(b"B")  # websockets' own writes (pong, close) take this path
        stream.cork(b"C")
        assert stream.send_now(b"D")  # a heartbeat ping, or a quiet send
        stream.cork(b"E")
        stream.uncork_to_pending()  # a message had to be queued: the writer goes next
        assert stream.pending == 1
        assert not stream.idle
        await stream.send_all(b"F")
        assert received(peer) == b"ABCDEF"
        await stream.aclose()


async def test_what_the_kernel_does_not_take_stays_pending_in_order() -> None:
    stream, peer = stream_pair()
    with peer:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = bytes(range(256)) * 8192  # 2 MiB: far more than the socket buffers hold
        assert stream.cork(big) is True  # past CORK_MAX_BYTES: the caller flushes now
        stream.cork(b"tail")
        assert stream.flush()
        assert stream.pending > 0  # written partly; the rest waits for a writer
        got = bytearray()

        async def read_all() -> None:
            while len(got) < len(big) + 4:
                try:
                    got.extend(peer.recv(1 << 16))
                except BlockingIOError:
                    await trio.sleep(0.001)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await stream.send_all(b"")  # a writer: pending bytes first
        assert bytes(got) == big + b"tail"
        await stream.aclose()


async def test_a_closed_stream_refuses_direct_writes() -> None:
    stream, peer = stream_pair()
    with peer:
        stream.cork(b"x")
        await stream.aclose()
        assert not stream.send_now(b"y")
        assert stream.flush()  # aclose dropped what was corked


class Item:
    def __init__(self, log: list[str], name: str) -> None:
        self.log = log
        self.name = name

    def flush_corked(self) -> None:
        self.log.append(self.name)


async def test_a_quiet_send_is_written_at_once_and_a_burst_is_corked(
    mock_clock: trio.testing.MockClock,
) -> None:
    # The mock clock stands still unless jumped: sends are "at once" or QUIET apart.
    queue = FlushQueue[Item]()
    assert queue.begin() is False  # not running (a server stopping): never cork
    flushed: list[str] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        assert queue.begin() is False  # quiet: write now (isolated: no window)
        assert queue.begin() is False  # a second right after: write now, a window opens
        assert queue.begin() is True  # a third in the same pass: cork
        queue.add(Item(flushed, "a"))
        queue.add(Item(flushed, "b"))
        await trio.testing.wait_all_tasks_blocked()
        assert flushed == ["a", "b"]  # one flush, in order
        # That flush had work: a burst may be under way, so the window stayed open for one
        # more cycle; it closed when that cycle found nothing corked.
        assert queue.begin() is False  # (the sends before were "at once": a window opens)
        await trio.testing.wait_all_tasks_blocked()
        assert queue.begin() is False
        # A send QUIET after the one before is isolated: written at once, and no window
        # opens (no task wakes up for it), so the next one is written at once too.
        mock_clock.jump(FlushQueue.QUIET)
        await trio.testing.wait_all_tasks_blocked()
        assert queue.begin() is False
        assert queue.begin() is False  # this one opens the window
        assert queue.begin() is True
        nursery.cancel_scope.cancel()
    assert not queue.running


async def test_the_flush_waits_for_the_sends_of_the_next_passes(
    mock_clock: trio.testing.MockClock,
) -> None:
    queue = FlushQueue[Item]()
    flushed: list[str] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        assert queue.begin() is False
        assert queue.begin() is False  # the window opens
        for i in range(FlushQueue.PASSES):
            await trio.lowlevel.checkpoint()  # a broadcaster yielding between broadcasts
            assert queue.begin() is True
            queue.add(Item(flushed, str(i)))
        assert flushed == []
        await trio.testing.wait_all_tasks_blocked()
        assert flushed == [str(i) for i in range(FlushQueue.PASSES)]
        nursery.cancel_scope.cancel()


class CountingQueue(FlushQueue[Item]):
    """Records how many connections each flush wrote (here: one item per corked send)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def _flush_all(self) -> None:
        if self._items:
            self.batches.append(len(self._items))
        super()._flush_all()


async def burst(
    queue: CountingQueue, clock: trio.testing.MockClock, sends: int, each_pass: Any = None
) -> None:
    """After a quiet moment, a broadcaster sending once per scheduler pass (every send after
    the first two corked), then waiting until everything is flushed. `each_pass()` runs
    after every pass."""
    flushed: list[str] = []
    clock.jump(FlushQueue.QUIET)
    assert queue.begin() is False  # quiet: the first is written at once
    assert queue.begin() is False  # and the second, which opens the window (time stands still)
    for i in range(sends):
        await trio.lowlevel.checkpoint()
        if each_pass is not None:
            each_pass()
        assert queue.begin() is True
        queue.add(Item(flushed, str(i)))
    await trio.testing.wait_all_tasks_blocked()
    assert flushed == [str(i) for i in range(sends)]  # each once, in order


async def test_a_sustained_burst_batches_more_sends_per_write(
    mock_clock: trio.testing.MockClock,
) -> None:
    # The mock clock stands still: no cycle reaches MAX_DELAY, only the pass count limits.
    queue = CountingQueue()
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        await burst(queue, mock_clock, 120)
        # The first window is PASSES passes (one more or less: the order of tasks within a
        # scheduler pass is Trio's); each cycle that flushed doubles, up to MAX_PASSES.
        first = queue.batches[0]
        assert abs(first - FlushQueue.PASSES) <= 1
        assert max(queue.batches) >= FlushQueue.MAX_PASSES - 1
        assert all(n <= FlushQueue.MAX_PASSES + 1 for n in queue.batches)
        # A quiet cycle closed the window: the next burst starts small again.
        queue.batches.clear()
        await burst(queue, mock_clock, 4)
        assert abs(queue.batches[0] - FlushQueue.PASSES) <= 1
        nursery.cancel_scope.cancel()


async def test_a_grown_cycle_ends_after_max_delay(mock_clock: trio.testing.MockClock) -> None:
    queue = CountingQueue()
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        await burst(queue, mock_clock, 60)  # the cycles have grown
        assert max(queue.batches) >= FlushQueue.MAX_PASSES - 1
        queue.batches.clear()
        # Passes now take MAX_DELAY each (a busy server): every cycle ends after one.
        await burst(queue, mock_clock, 40, lambda: mock_clock.jump(FlushQueue.MAX_DELAY))
        assert all(n <= 2 for n in queue.batches[1:])
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("pad", [10, CORK_MAX_BYTES // 3])
async def test_a_burst_of_broadcasts_arrives_whole_and_in_order(
    make_manager: Any, monkeypatch: pytest.MonkeyPatch, pad: int
) -> None:
    flushes = 0
    original = Connection.flush_corked

    def counting(self: Connection) -> None:
        nonlocal flushes
        flushes += 1
        original(self)

    monkeypatch.setattr(Connection, "flush_corked", counting)
    # Every send after the first opens a window, however slow the machine: not a timing test.
    monkeypatch.setattr(FlushQueue, "QUIET", math.inf)
    manager = make_manager(rate_limit=None)
    async with manager, client(manager) as a, client(manager) as b, client(manager) as c:
        for cl in (a, b, c):
            await cl.request({"type": "join_room", "room": "burst"})
        flushes = 0
        n = 40
        for i in range(n):
            await manager.broadcast_to_room("burst", {"type": "m", "i": i, "pad": "x" * pad})
        for cl in (a, b, c):
            assert [(await cl.recv())["i"] for _ in range(n)] == list(range(n))
        # Broadcast 3 came one pass after broadcast 2, inside its window: corked. With
        # large frames the corked bytes pass CORK_MAX_BYTES and are written at once.
        assert 0 < flushes < 3 * n


async def test_send_frame_writes_only_an_idle_socket() -> None:
    # A fan-out's quiet case: the idle checks and the write in one call; anything under way
    # (corked frames, a partly written frame, a write, the send lock) makes it BUSY, and
    # then nothing is written, so nothing overtakes what waits.
    stream, peer = stream_pair()
    with peer:
        assert stream.send_frame(b"one,") == WROTE
        stream.cork(b"two,")
        assert stream.send_frame(b"x") == BUSY
        assert stream.flush()
        assert received(peer) == b"one,two,"
        stream.lock_held = True  # websockets or the writer holds the connection's send lock
        assert not stream.idle
        assert stream.send_frame(b"x") == BUSY
        stream.lock_held = False
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = bytes(range(256)) * 8192
        assert stream.send_frame(big) == PARTIAL  # the rest is pending, for a writer
        assert stream.pending > 0
        assert stream.send_frame(b"x") == BUSY
        got = bytearray()

        async def read_all() -> None:
            while len(got) < len(big):
                try:
                    got.extend(peer.recv(1 << 16))
                except BlockingIOError:
                    await trio.sleep(0.001)

        got.extend(received(peer))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await stream.send_all(b"")
        assert bytes(got) == big
        await stream.aclose()
        assert stream.send_frame(b"y") == BROKEN  # closed: never another connection's socket


async def test_cork_more_adds_only_to_corked_frames() -> None:
    # A burst's later frames: they join frames already corked, in order; with nothing corked
    # (the window's first frame, which needs the idle checks) nothing is done.
    stream, peer = stream_pair()
    with peer:
        assert stream.cork_more(b"x") == BUSY
        assert not stream.corking
        stream.cork(b"one,")
        assert stream.cork_more(b"two,") == CORKED
        assert stream.cork_more(b"three,") == CORKED
        assert received(peer) == b""
        assert stream.flush()
        assert received(peer) == b"one,two,three,"
        assert stream.cork_more(b"x") == BUSY  # the flush took them
        stream.cork(b"a" * (CORK_MAX_BYTES - 2))
        assert stream.cork_more(b"bb") == CORKED_FULL  # the bound: the caller flushes now
        assert stream.flush()
        assert received(peer) == b"a" * (CORK_MAX_BYTES - 2) + b"bb"
        await stream.aclose()


async def test_a_broadcast_waits_while_the_send_lock_is_held(make_manager: Any) -> None:
    # websockets writes its own frames (pong, close) under the connection's send lock; the
    # fan-out's direct write checks the stream only, which must know the lock is held.
    manager = make_manager(rate_limit=None, compression=False)  # shared frames: direct
    async with manager, client(manager) as c:
        await c.request({"type": "join_room", "room": "r"})
        (conn,) = manager.connections.values()
        written = conn.messages_out
        async with conn._ws.send_lock:
            for i in range(2):
                await trio.testing.wait_all_tasks_blocked()  # quiet: a fan-out writes now
                await manager.broadcast_to_room("r", {"type": "m", "i": i})
            assert conn.messages_out == written  # for the writer, once the lock is free
        assert [(await c.recv())["i"] for _ in range(2)] == [0, 1]
        assert conn.messages_out == written + 2

"""The server-wide heartbeat schedule without sockets (sans-IO), and its wiring on real ones."""

from __future__ import annotations

import gc
from typing import Any

import pytest
import trio
from websockets.trio.client import connect

from trio_rt import Connection
from trio_rt._core.heartbeat import HeartbeatSchedule

from ..conftest import client, wait_until


def items(beats: list[Any]) -> list[Any]:
    return [b.item for b in beats]


def test_first_ping_one_interval_after_add_then_every_interval() -> None:
    s: HeartbeatSchedule[str] = HeartbeatSchedule(interval=5.0, timeout=2.0)
    beat = s.add("a", now=100.0)
    assert s.next_time() == 105.0
    assert s.poll(104.9) == ([], [])
    pings, timeouts = s.poll(105.0)
    assert items(pings) == ["a"] and timeouts == []
    payload = beat.payload
    assert payload is not None
    assert s.pong(beat, payload)
    assert s.next_time() == 110.0  # fixed rate from the ping, the answered deadline is gone
    pings, _ = s.poll(110.0)
    assert items(pings) == ["a"] and beat.payload != payload  # a fresh payload each ping


def test_unanswered_ping_times_out_once_and_is_forgotten() -> None:
    s: HeartbeatSchedule[str] = HeartbeatSchedule(interval=5.0, timeout=2.0)
    s.add("a", now=0.0)
    s.add("b", now=1.0)
    pings, _ = s.poll(5.0)
    assert items(pings) == ["a"]
    a_payload = pings[0].payload
    pings, _ = s.poll(6.0)
    (b_beat,) = pings
    assert b_beat.payload is not None and s.pong(b_beat, b_beat.payload)
    assert s.poll(6.99) == ([], [])  # never early
    pings, timeouts = s.poll(7.0)
    assert timeouts == ["a"] and pings == []
    assert not s.pong(pings[0] if pings else b_beat, a_payload or b"")  # stale: ignored
    later_pings, later_timeouts = s.poll(100.0)
    assert items(later_pings) == ["b"] and later_timeouts == []  # "a" is gone for good


def test_wrong_or_late_pong_does_not_count() -> None:
    s: HeartbeatSchedule[str] = HeartbeatSchedule(interval=1.0, timeout=1.0)
    beat = s.add("a", now=0.0)
    s.poll(1.0)
    assert not s.pong(beat, b"nope")
    assert s.poll(2.0)[1] == ["a"]


def test_no_new_ping_while_one_is_unanswered() -> None:
    s: HeartbeatSchedule[str] = HeartbeatSchedule(interval=1.0, timeout=3.5)
    beat = s.add("a", now=0.0)
    assert len(s.poll(1.0)[0]) == 1
    first = beat.payload
    assert s.poll(2.0) == ([], []) and s.poll(3.0) == ([], [])
    assert beat.payload == first
    assert first is not None and s.pong(beat, first)
    assert len(s.poll(4.0)[0]) == 1  # answered: pinging resumes at the next due time


def test_removed_beats_are_dropped_lazily() -> None:
    s: HeartbeatSchedule[str] = HeartbeatSchedule(interval=1.0, timeout=1.0)
    a = s.add("a", now=0.0)
    s.add("b", now=0.5)
    s.poll(1.0)
    s.remove(a)  # e.g. the connection closed with its ping unanswered
    assert a.item is None and a.payload is None
    pings, timeouts = s.poll(10.0)
    assert items(pings) == ["b"] and timeouts == []
    s.remove(s.add("c", now=10.0))
    assert "c" not in items(s.poll(11.0)[0])


def test_many_items_stay_in_order() -> None:
    s: HeartbeatSchedule[int] = HeartbeatSchedule(interval=2.0, timeout=1.0)
    beats = [s.add(i, now=i / 100) for i in range(100)]
    seen: list[int] = []
    t = 0.0
    while t < 5.75:
        t += 0.25
        pings, timeouts = s.poll(t)
        assert timeouts == []
        for b in pings:
            assert b.payload is not None and s.pong(b, b.payload)
        seen += items(pings)
    assert seen == list(range(100)) * 2  # each pinged twice by 5.75 s, in order
    assert all(b.item is not None for b in beats)


def task_names() -> list[str]:
    root = trio.lowlevel.current_root_task()
    assert root is not None
    names, stack = [], [root]
    while stack:
        task = stack.pop()
        names.append(task.name)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return names


async def test_one_heartbeat_task_pings_every_connection(
    make_manager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pings reach clients, pongs keep them open; no task per connection for either."""
    manager = make_manager(heartbeat_interval=0.05, heartbeat_timeout=1.0)
    codes: list[int] = []
    answered: dict[int, int] = {}  # id(conn) -> pongs that answered its ping
    pong = Connection.heartbeat_pong

    def counting_pong(self: Connection, payload: bytes) -> None:
        # Counted here, not polled: an outstanding ping lasts well under a poll interval.
        if self._beat is not None and self._beat.payload == payload:
            answered[id(self)] = answered.get(id(self), 0) + 1
        pong(self, payload)

    monkeypatch.setattr(Connection, "heartbeat_pong", counting_pong)

    @manager.on_disconnect
    async def gone(conn: Connection, code: int) -> None:
        codes.append(code)

    async with manager, client(manager) as a, client(manager) as b:
        conns = list(manager.connections.values())
        # websockets' client answers pings itself: wait for several answered pings
        await wait_until(lambda: all(answered.get(id(c), 0) >= 3 for c in conns))
        names = task_names()
        assert sum("HeartbeatDriver.run" in n for n in names) == 1
        assert not [n for n in names if n.endswith(("Connection._writer", "._heartbeat"))]
        assert (await a.request({"type": "ping"}))["type"] == "pong"
        assert (await b.request({"type": "ping"}))["type"] == "pong"
    await wait_until(lambda: len(codes) == 2)
    assert manager.stats.heartbeat_timeouts == 0


async def test_a_ping_waits_for_a_busy_socket_then_goes_out(make_manager: Any) -> None:
    """While another write holds the connection, the due ping is handed to a writer task,
    which sends it once the socket is free; the pong then counts."""
    manager = make_manager(heartbeat_interval=0.05, heartbeat_timeout=10.0)
    async with manager, client(manager) as c:
        (conn,) = manager.connections.values()
        async with conn._ws.send_lock:  # as a long write would
            await wait_until(lambda: conn._ping_wanted is not None)
            assert conn._beat is not None and conn._beat.payload is not None
        await wait_until(lambda: conn._ping_wanted is None)
        await wait_until(lambda: conn._beat is not None and conn._beat.payload is None)
        assert manager.stats.heartbeat_timeouts == 0
        assert (await c.request({"type": "ping"}))["type"] == "pong"


async def test_a_connection_closed_mid_ping_leaves_the_schedule(make_manager: Any) -> None:
    manager = make_manager(heartbeat_interval=0.05, heartbeat_timeout=0.2)
    async with manager:
        for _ in range(3):
            async with connect(manager.url, ping_interval=None) as ws:
                await ws.recv()
        await wait_until(lambda: not manager.connections)
        await trio.sleep(0.4)  # past every deadline: nothing fires for the closed ones
        assert manager.stats.heartbeat_timeouts == 0
        driver = manager._heartbeats
        assert driver is not None
        schedule = driver.schedule
        await wait_until(lambda: schedule.next_time() is None)


async def test_gc_freeze_interval_is_opt_in_and_undone_on_exit(make_manager: Any) -> None:
    with pytest.raises(ValueError, match="gc_freeze_interval"):
        make_manager(gc_freeze_interval=0)
    assert gc.get_freeze_count() == 0
    async with make_manager():  # default: the host's GC is left alone
        await trio.sleep(0.05)
        assert gc.get_freeze_count() == 0
    manager = make_manager(gc_freeze_interval=0.05)
    async with manager, client(manager) as c:
        await wait_until(lambda: gc.get_freeze_count() > 0)
        await trio.sleep(0.6)  # past a 10th round: unfreeze, full collection, freeze again
        assert gc.get_freeze_count() > 0
        assert (await c.request({"type": "ping"}))["type"] == "pong"
    assert gc.get_freeze_count() == 0

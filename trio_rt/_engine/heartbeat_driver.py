"""HeartbeatDriver: the I/O side of the server's heartbeat schedule, on one `Timers` key.

`HeartbeatSchedule` (`_core/heartbeat.py`, sans-IO) says whom to ping and whose pong is late; this
sends the pings and closes the late connections, in one task for the whole server: the
`Timers` task of one key, whose deadline is always the schedule's next due time plus a slack.
A connection that opens registers with `add`; its first ping may be due before the task's
next wake-up, which then moves earlier (`Timers.set`). Pongs reach the schedule through the
connection (`Connection.heartbeat_pong`), without this driver.
"""

from __future__ import annotations

import logging
import math
from typing import Generic, Protocol, TypeVar

import trio

from .._core.heartbeat import Beat, HeartbeatSchedule
from .timers import Timers

__all__ = ["HeartbeatDriver"]

log = logging.getLogger("trio_rt")


class Beating(Protocol):
    """What the driver calls on a connection (`Connection` implements it)."""

    def heartbeat_ping(self, payload: bytes) -> None: ...

    def heartbeat_timed_out(self) -> None: ...


C = TypeVar("C", bound=Beating)
_WAKE = 0  # the one key of the driver's Timers


class HeartbeatDriver(Generic[C]):
    """Ping every connection each `interval` s; close (4001) those whose pong is later than
    `timeout` (what `Connection.heartbeat_timed_out` does).

    Due pings and deadlines are handled in batches: the task sleeps until the earliest one
    plus 1 % of min(interval, timeout), so a ping or a timeout is at most that late (never
    early), and 10,000 connections cost tens of wake-ups a second, not thousands.

    `add(conn)` (sync) puts an opened connection on the schedule and returns its `Beat`;
    None while the driver is not running (the server is not serving). `run` is the one task,
    in the manager's nursery (``await nursery.start(driver.run)``), until cancelled.
    """

    def __init__(self, interval: float, timeout: float) -> None:
        self.schedule = HeartbeatSchedule[C](interval, timeout)
        self._slack = min(interval, timeout) / 100
        self._timers = Timers[int]()
        self._wake_at = math.inf
        self.running = False

    def add(self, conn: C) -> Beat[C] | None:
        if not self.running:
            return None
        schedule = self.schedule
        now = trio.current_time()
        beat = schedule.add(conn, now)
        if now + schedule.interval < self._wake_at:  # the task sleeps past its first ping
            self._wake(now + schedule.interval)
        return beat

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.running = True
        try:
            task_status.started()
            await self._timers.run(self._beat)
        finally:
            self.running = False
            self._wake_at = math.inf

    def _wake(self, due: float) -> None:
        self._wake_at = due + self._slack
        self._timers.set(_WAKE, self._wake_at)

    def _beat(self, key: int) -> None:
        schedule = self.schedule
        pings, timeouts = schedule.poll(trio.current_time())
        for beat in pings:
            conn = beat.item
            assert conn is not None and beat.payload is not None
            try:
                conn.heartbeat_ping(beat.payload)
            except Exception:  # one connection's failure must not stop the others
                log.exception("heartbeat ping failed for %r", conn)
        for conn in timeouts:
            conn.heartbeat_timed_out()
        nxt = schedule.next_time()
        if nxt is None:
            self._wake_at = math.inf
        else:
            self._wake(nxt)

"""What the server counts (`ServerStats`) and what a metrics object observes (`Instruments`).

Sans-IO: plain data. Every part of the engine adds to the one `ServerStats` of its manager;
`WebSocketMetrics` (trio_rt/_engine/metrics.py) turns the counters into rates and Prometheus series
and is attached to the manager as its `Instruments`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["ChangeStreamStats", "Instruments", "ServerStats"]


@dataclass
class ServerStats:
    """Counters since start; WebSocketMetrics turns them into rates and Prometheus series."""

    started_at: float = field(default_factory=time.time)
    connections_opened: int = 0
    connections_closed: int = 0
    handshakes_rejected: dict[str, int] = field(default_factory=dict)
    messages_in: int = 0
    messages_out: int = 0
    broadcasts: int = 0
    deliveries: int = 0
    slow_consumers: int = 0
    dropped_messages: int = 0
    heartbeat_timeouts: int = 0
    handler_errors: int = 0
    protocol_errors: int = 0
    rate_limited: int = 0  # messages refused by the rate limits
    tokens_expired: int = 0  # connections closed with 4004
    reorder_skipped: int = 0  # room offsets passed without delivery (not in the store, or unread)
    reorder_late: int = 0  # room messages delivered after a greater offset (hole skipped)
    reorder_healed: int = 0  # room messages found by store reads (holes, broker breaks)
    reorder_duplicates: int = 0  # room messages dropped: delivered already, or before the start
    room_gaps: int = 0  # room_gap notices: ranges skipped without the store's answer

    def rejected(self, reason: str) -> None:
        self.handshakes_rejected[reason] = self.handshakes_rejected.get(reason, 0) + 1


class Instruments(Protocol):
    """What a metrics object observes at the engine's instrumentation points
    (`WebSocketManager.attach_instruments`; trio_rt._engine.metrics implements it).

    Called once per app handler call and once per broadcast delivered, never per recipient.
    """

    def handler_finished(self, type: str, seconds: float) -> None: ...

    def fanned_out(self, recipients: int, seconds: float) -> None: ...


class ChangeStreamStats(Protocol):
    """What WebSocketMetrics reads of the change streams attached to a manager
    (`WebSocketManager.attach_change_streams`; `ChangeStreamManager` implements it)."""

    def lag(self) -> float: ...

    def subscription_count(self) -> int: ...

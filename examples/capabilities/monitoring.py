"""Capability section "Performance Monitoring", in trio_rt.

``new WebSocketMetrics(wsManager)`` is `WebSocketMetrics(manager)`: ``get_stats()`` returns the
TypeScript original's numbers (active connections, messages per second, rooms, memory in MB) and
more; ``exportToPrometheus({endpoint: '/ws-metrics', port: 9092})`` is
``export_to_prometheus(endpoint="/ws-metrics", port=9092)``, a Prometheus exporter on its own
port (the manager's port also answers ``GET /metrics``). The TypeScript original's ``setInterval``
becomes a task in the manager's nursery (`add_service`): it lives and dies with the server.

Needs the `metrics` extra (prometheus-client): ``pip install 'trio_rt[metrics]'``.
docs/operations.md has the metric names, the Grafana dashboard and the alerts.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from trio_rt import WebSocketManager, WebSocketMetrics

log = logging.getLogger("examples.capabilities.monitoring")


def stats_lines(metrics: WebSocketMetrics) -> list[str]:
    """The TypeScript original's four lines about the server, from `get_stats()`."""
    stats = metrics.get_stats()
    memory = "?" if stats.memory_usage_mb is None else f"{stats.memory_usage_mb:.0f}"
    return [
        f"Active connections: {stats.active_connections}",
        f"Messages/sec: {stats.messages_per_second_in:.1f}",
        f"Rooms: {stats.total_rooms}",
        f"Memory usage: {memory}MB",
    ]


def build_app(
    *, interval: float = 10.0, prometheus_port: int = 9092, **options: Any
) -> tuple[WebSocketManager, WebSocketMetrics]:
    """A manager with metrics; serve both with ``async with manager, metrics:``. Every
    `interval` seconds the stats are logged; Prometheus scrapes ``/ws-metrics`` on
    `prometheus_port` (9092)."""
    ws_manager = WebSocketManager(**options)
    ws_metrics = WebSocketMetrics(ws_manager)

    # Real-time metrics, logged every 10 s while the server runs.
    async def report(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            log.info("WebSocket Stats: %s", "; ".join(stats_lines(ws_metrics)))
            await trio.sleep(interval)

    ws_manager.add_service(report)

    # Export metrics
    ws_metrics.export_to_prometheus(endpoint="/ws-metrics", port=prometheus_port)
    return ws_manager, ws_metrics

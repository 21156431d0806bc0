"""The samples of docs/operations.md, run by tests/integration/test_doc_samples.py. The Prometheus
files the page includes are examples/prometheus/prometheus.yml and
examples/prometheus/alerts.yml."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any


async def monitored_server(
    host: str = "0.0.0.0",
    port: int = 3001,
    prometheus_port: int = 9092,
    check: Callable[[Any, Any], Awaitable[None]] | None = None,
) -> None:
    """Serve with metrics; `check(manager, metrics)` runs while serving (the tests scrape)."""
    # --8<-- [start:metrics]
    from trio_rt import WebSocketManager, WebSocketMetrics

    manager = WebSocketManager(host=host, port=port)  # host="0.0.0.0", port=3001
    metrics = WebSocketMetrics(manager)  # GET /metrics on the manager's port from now on
    metrics.export_to_prometheus(endpoint="/ws-metrics", port=prometheus_port)  # optional: 9092

    async with manager, metrics:  # metrics.run: samples rates, runs the 9092 listener
        stats = metrics.get_stats()
        print(stats.active_connections, stats.messages_per_second_in, stats.memory_usage_mb)
        # --8<-- [end:metrics]
        if check is not None:
            await check(manager, metrics)

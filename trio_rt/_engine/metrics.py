"""WebSocketMetrics: live statistics and Prometheus metrics of one WebSocketManager.

Three parts:

- `SlidingWindowRate` (sans-IO): per-second buckets in a ring, fed with a counter's running
  total and an explicit timestamp; it never reads a clock itself.
- `WebSocketMetrics`: `get_stats()` (a `WebSocketStats` snapshot), a dedicated Prometheus
  `CollectorRegistry` whose collector reads the manager's live state at scrape time, and
  histograms observed at the manager's instrumentation points (one call per app handler call
  and per broadcast, never per recipient).
- Serving: ``/metrics`` on the manager's own port (a route, no task), and on request a small
  HTTP/1.1 listener of its own (`export_to_prometheus`), run by `WebSocketMetrics.run`.

`SlidingWindowRate` is in `_core/rates.py`, the collector and the exporter's HTTP in
`metrics_prometheus.py`; every public name is importable from here.

Every task lives in `run` (``async with WebSocketMetrics(manager) as metrics:`` or
``await nursery.start(metrics.run)``): nothing starts behind the caller's back.
Requires the ``metrics`` extra (prometheus-client; psutil is used for RSS when installed).
"""

from __future__ import annotations

import importlib
import logging
import os
import time
import warnings
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .._core.checks import require_positive_numbers
from .._core.rates import SlidingWindowRate
from .http import HttpResponse
from .metrics_prometheus import ExporterHandler, ManagerCollector, check_endpoint

if TYPE_CHECKING:
    from websockets.http11 import Request as WsRequest

    from .manager import WebSocketManager

__all__ = ["CAMEL_CASE_NAMES", "SlidingWindowRate", "WebSocketMetrics", "WebSocketStats"]

log = logging.getLogger("trio_rt.metrics")

# Seconds. Handlers and fan-outs are usually sub-millisecond; the tail is what matters.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
RECIPIENT_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


# -- the snapshot ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WebSocketStats:
    """What `WebSocketMetrics.get_stats()` returns. `to_dict(camel_case=True)` names four
    fields in camelCase, the keys of the TypeScript `WebSocketManager` trio_rt's API started
    from (see `CAMEL_CASE_NAMES`), for dashboards that read those."""

    server_id: str
    uptime_seconds: float
    active_connections: int
    messages_per_second_in: float
    messages_per_second_out: float
    messages_in_total: int
    messages_out_total: int
    total_rooms: int
    room_memberships: int  # (connection, room) pairs on this server
    broker_subscriptions: int  # broker channels this server is subscribed to
    table_subscriptions: int  # client subscriptions to table changes (ChangeStreamManager)
    memory_usage_mb: float | None  # resident set size; None when it cannot be read
    outbox_depth_max: int  # messages queued for the most backed-up client
    outbox_depth_total: int
    outbox_bytes_total: int
    slow_consumer_disconnects: int
    dropped_messages: int
    heartbeat_timeouts: int
    broker_backlog: int  # messages waiting in the broker's own queues (both directions)
    broker_errors: int
    change_stream_lag_seconds: float | None  # None until a change feed reports its lag
    handler_errors: int
    protocol_errors: int
    handshakes_rejected: Mapping[str, int]
    worker: int | None = None  # the worker number under `trio-rt serve --workers N`
    # This server's presence summed over rooms (PresenceService.totals): None without presence.
    presence: Mapping[str, int] | None = None

    def to_dict(
        self, *, camel_case: bool = False, seed_names: bool | None = None
    ) -> dict[str, Any]:
        """The fields as a dict (JSON-ready). `camel_case`: the fields of `CAMEL_CASE_NAMES`
        under their camelCase keys. `seed_names` is the deprecated name of `camel_case`."""
        if seed_names is not None:
            warnings.warn(
                "to_dict(seed_names=...) is deprecated; use to_dict(camel_case=...)",
                DeprecationWarning,
                stacklevel=2,
            )
            camel_case = camel_case or seed_names
        d = asdict(self)
        d["handshakes_rejected"] = dict(self.handshakes_rejected)
        if self.presence is not None:
            d["presence"] = dict(self.presence)
        if camel_case:
            d = {CAMEL_CASE_NAMES.get(k, k): v for k, v in d.items()}
        return d


CAMEL_CASE_NAMES: Mapping[str, str] = {
    "active_connections": "activeConnections",
    "messages_per_second_in": "messagesPerSecond",
    "total_rooms": "totalRooms",
    "memory_usage_mb": "memoryUsage",
}
"""snake_case field -> its camelCase key in `WebSocketStats.to_dict(camel_case=True)` (one
``messagesPerSecond``: the incoming rate)."""


def __getattr__(name: str) -> object:
    if name == "SEED_NAMES":  # the old name of CAMEL_CASE_NAMES
        warnings.warn(
            "SEED_NAMES is deprecated; use CAMEL_CASE_NAMES", DeprecationWarning, stacklevel=2
        )
        return CAMEL_CASE_NAMES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- the metrics object ---------------------------------------------------------------------------
class WebSocketMetrics:
    """Statistics and Prometheus metrics for `manager`.

    ::

        metrics = WebSocketMetrics(manager)           # also serves GET /metrics on its port
        metrics.export_to_prometheus(endpoint="/ws-metrics", port=9092)   # optional
        async with metrics:                           # samples rates, runs the exporter
            stats = metrics.get_stats()

    `window`: seconds of the messages/s sliding window; `sample_interval`: how often `run`
    samples the counters; `route`: the path on the manager's port (None: no route);
    `change_stream_lag`: a callable returning the change feed's lag in seconds (or None;
    default: the manager's ChangeStreamManager's `lag`, when it has one);
    `clock`: monotonic seconds, injectable for tests.
    """

    def __init__(
        self,
        manager: WebSocketManager,
        *,
        route: str | None = "/metrics",
        window: int = 10,
        sample_interval: float = 1.0,
        change_stream_lag: Callable[[], float | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        require_positive_numbers(sample_interval=sample_interval)
        if route is not None:
            check_endpoint(route)
        if manager.instruments is not None:
            raise RuntimeError("this manager already has a WebSocketMetrics")
        self.manager = manager
        self.sample_interval = sample_interval
        self._clock = clock
        self._change_stream_lag = change_stream_lag
        self._rate_in = SlidingWindowRate(window)
        self._rate_out = SlidingWindowRate(window)
        self._exports: list[tuple[str, str, int]] = []
        self._export_nursery: trio.Nursery | None = None
        self._addresses: dict[str, tuple[str, int]] = {}
        self._running = False
        self._process: Any = _psutil_process()

        self.registry = CollectorRegistry(auto_describe=True)
        sid = manager.server_id
        self._handler_seconds = Histogram(
            "trio_rt_handler_duration_seconds",
            "Time spent in app message handlers, by registered message type ('*': fallback).",
            ["server_id", "type"],
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self._fanout_seconds = Histogram(
            "trio_rt_broadcast_fanout_duration_seconds",
            "Time to hand one broadcast to every local recipient's outbox or socket.",
            ["server_id"],
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        ).labels(sid)
        self._fanout_recipients = Histogram(
            "trio_rt_broadcast_recipients",
            "Local recipients per broadcast delivered by this server.",
            ["server_id"],
            registry=self.registry,
            buckets=RECIPIENT_BUCKETS,
        ).labels(sid)
        self._handler_children: dict[str, Any] = {}
        self.publishers: list[Any] = []  # Publisher: `acks` by outcome
        self.server_apis: list[Any] = []  # ServerAPI: `calls` by (call, outcome)
        self.registry.register(ManagerCollector(self))
        if route is not None:
            manager.route(route)(self._http_handler)
        manager.attach_instruments(self)

    def observe_publisher(self, publisher: Any) -> None:
        """Export a `Publisher`'s acks by outcome (``trio_rt_publish_acks``)."""
        if publisher not in self.publishers:
            self.publishers.append(publisher)

    def observe_server_api(self, api: Any) -> None:
        """Export a `ServerAPI`'s calls by call and outcome (``trio_rt_api_calls``), and its
        publisher's acks."""
        if api not in self.server_apis:
            self.server_apis.append(api)
        self.observe_publisher(api.publisher)

    # -- instrumentation points (called by the manager) --------------------------------------
    def handler_finished(self, type: str, seconds: float) -> None:
        child = self._handler_children.get(type)
        if child is None:
            child = self._handler_children[type] = self._handler_seconds.labels(
                self.manager.server_id, type
            )
        child.observe(seconds)

    def fanned_out(self, recipients: int, seconds: float) -> None:
        self._fanout_seconds.observe(seconds)
        self._fanout_recipients.observe(recipients)

    # -- statistics ----------------------------------------------------------------------------
    def sample(self) -> None:
        """Feed the sliding windows with the manager's counters (what `run` does each interval)."""
        now = self._clock()
        stats = self.manager.stats
        self._rate_in.observe_total(stats.messages_in, now)
        self._rate_out.observe_total(stats.messages_out, now)

    def get_stats(self) -> WebSocketStats:
        """A snapshot of the manager's state; rates cover the last `window` seconds.

        Rates need sampling: `run` does it every `sample_interval`; without it each call
        samples once, and everything since the previous call counts as this second's.
        """
        self.sample()
        now = self._clock()
        m = self.manager
        s = m.stats
        depth_max = depth_total = bytes_total = 0
        for conn in m.connections.values():
            depth = conn.outbox_depth
            depth_total += depth
            bytes_total += conn.outbox_bytes
            if depth > depth_max:
                depth_max = depth
        broker_stats = getattr(m.broker, "stats", None)
        streams = m.change_streams
        lag = self._change_stream_lag
        if lag is None and streams is not None:
            lag = streams.lag
        return WebSocketStats(
            server_id=m.server_id,
            uptime_seconds=max(0.0, time.time() - s.started_at),
            active_connections=len(m.connections),
            messages_per_second_in=self._rate_in.rate(now),
            messages_per_second_out=self._rate_out.rate(now),
            messages_in_total=s.messages_in,
            messages_out_total=s.messages_out,
            total_rooms=len(m.rooms),
            room_memberships=sum(len(m.members_of(r)) for r in m.rooms),
            broker_subscriptions=len(m.broker.channels),
            table_subscriptions=streams.subscription_count() if streams is not None else 0,
            memory_usage_mb=_rss_bytes(self._process) / 2**20 if self._process else _rss_mb(),
            outbox_depth_max=depth_max,
            outbox_depth_total=depth_total,
            outbox_bytes_total=bytes_total,
            slow_consumer_disconnects=s.slow_consumers,
            dropped_messages=s.dropped_messages,
            heartbeat_timeouts=s.heartbeat_timeouts,
            broker_backlog=_broker_backlog(m.broker),
            broker_errors=int(getattr(broker_stats, "errors", 0)),
            change_stream_lag_seconds=lag() if lag is not None else None,
            handler_errors=s.handler_errors,
            protocol_errors=s.protocol_errors,
            handshakes_rejected=dict(s.handshakes_rejected),
            worker=m.options.worker_id,
            presence=m.presence.totals() if m.presence is not None else None,
        )

    # -- Prometheus ----------------------------------------------------------------------------
    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (what both endpoints serve)."""
        return generate_latest(self.registry)

    def _http_handler(self, request: WsRequest) -> HttpResponse:
        return HttpResponse(200, self.exposition(), CONTENT_TYPE_LATEST)

    def export_to_prometheus(
        self, endpoint: str = "/ws-metrics", port: int = 9092, host: str = "127.0.0.1"
    ) -> None:
        """Serve the metrics at http://host:port/endpoint too, on a listener of their own.

        The listener runs inside `run` (starting now if `run` is already running). ``port=0``
        picks a free port: see `prometheus_address(endpoint)`. Use ``host="0.0.0.0"`` for
        a Prometheus on another machine. Raises ValueError on a bad endpoint or port.
        """
        check_endpoint(endpoint)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError("port must be an integer in 0..65535")
        if not host:
            raise ValueError("host must not be empty")
        if any(e[0] == endpoint for e in self._exports):
            raise ValueError(f"{endpoint!r} is already exported")
        self._exports.append((endpoint, host, port))
        if self._export_nursery is not None:
            self._export_nursery.start_soon(self.serve_prometheus, endpoint, port, host)

    def prometheus_address(self, endpoint: str = "/ws-metrics") -> tuple[str, int]:
        """The bound (host, port) of an exporter started by `run`."""
        try:
            return self._addresses[endpoint]
        except KeyError:
            raise RuntimeError(f"no exporter for {endpoint!r} is running") from None

    async def serve_prometheus(
        self,
        endpoint: str = "/ws-metrics",
        port: int = 9092,
        host: str = "127.0.0.1",
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run an exporter in the caller's nursery: ``await nursery.start(m.serve_prometheus)``.

        HTTP/1.1, GET only, one response per connection, requests up to 8 KiB, 5 s to send
        the request and 10 s to read the response. Reports the bound (host, port).
        """
        check_endpoint(endpoint)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError("port must be an integer in 0..65535")
        listeners = await trio.open_tcp_listeners(port, host=host)
        sockname = listeners[0].socket.getsockname()
        address = (str(sockname[0]), int(sockname[1]))
        self._addresses[endpoint] = address
        try:
            async with trio.open_nursery() as nursery:
                handler = ExporterHandler(self, endpoint)
                await nursery.start(trio.serve_listeners, handler, listeners)
                log.info("metrics exporter on http://%s:%d%s", *address, endpoint)
                task_status.started(address)
        finally:
            self._addresses.pop(endpoint, None)

    # -- lifecycle -----------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample the counters every `sample_interval` and run the exporters configured with
        `export_to_prometheus`, until cancelled. Ready (exporters bound) at `started()`."""
        if self._running:
            raise RuntimeError("this WebSocketMetrics is already running")
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                for endpoint, host, port in self._exports:
                    await nursery.start(self.serve_prometheus, endpoint, port, host)
                self._export_nursery = nursery
                task_status.started()
                while True:
                    self.sample()
                    await trio.sleep(self.sample_interval)
        finally:
            self._export_nursery = None
            self._running = False

    @asynccontextmanager
    async def _running_cm(self) -> AsyncIterator[WebSocketMetrics]:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.run)
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()

    async def __aenter__(self) -> WebSocketMetrics:
        self._cm = self._running_cm()
        return await self._cm.__aenter__()

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._cm.__aexit__(*exc)

    def close(self) -> None:
        """Detach from the manager (its instrumentation points go back to doing nothing)."""
        self.manager.detach_instruments(self)


# -- helpers --------------------------------------------------------------------------------------
def _psutil_process() -> Any:
    try:
        psutil = importlib.import_module("psutil")  # optional; no stubs needed
    except ImportError:
        return None
    return psutil.Process(os.getpid())


def _rss_bytes(process: Any) -> int:
    return int(process.memory_info().rss)


def _rss_mb() -> float | None:
    """RSS without psutil: /proc on Linux, else unknown."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _broker_backlog(broker: Any) -> int:
    """Messages waiting in a broker's queues (`Broker.backlog`; 0 for brokers without)."""
    return int(getattr(broker, "backlog", 0))

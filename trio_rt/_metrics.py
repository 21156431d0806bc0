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

Every task lives in `run` (``async with WebSocketMetrics(manager) as metrics:`` or
``await nursery.start(metrics.run)``): nothing starts behind the caller's back.
Requires the ``metrics`` extra (prometheus-client; psutil is used for RSS when installed).
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from ._checks import require_positive_ints, require_positive_numbers
from ._http import HttpResponse

if TYPE_CHECKING:
    from websockets.http11 import Request as WsRequest

    from ._manager import WebSocketManager

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
MAX_REQUEST_BYTES = 8192  # the exporter's request line and headers
REQUEST_TIMEOUT = 5.0  # to receive a whole request
RESPONSE_TIMEOUT = 10.0  # to send a whole response
LINGER_TIMEOUT = 1.0  # after the response, to let the client close first
LINGER_BYTES = 65536  # unread request bytes drained before closing


# -- sans-IO: rates over a sliding window ---------------------------------------------------------
class SlidingWindowRate:
    """Events per second over the last `window` seconds, at one-second resolution.

    Feed it a counter's running total with `observe_total(total, now)` (the first call sets
    the baseline: what happened before is not counted; a total that goes down is a counter
    reset and counts from zero), or increments with `add(count, now)`. `rate(now)` divides the
    events of the buckets still in the window by the time they cover (at most `window`, at
    least one second, never more than the time since the first observation). `now` is any
    monotonic clock in seconds; the class never reads a clock itself.
    """

    def __init__(self, window: int = 10) -> None:
        require_positive_ints(window=window)  # whole seconds
        self.window = window
        self._seconds: list[int | None] = [None] * window
        self._counts: list[int] = [0] * window
        self._last_total: int | None = None
        self._started: float | None = None

    def observe_total(self, total: int, now: float) -> None:
        if self._last_total is None:
            self._last_total = total
            if self._started is None:
                self._started = now
            return
        delta = total - self._last_total
        self._last_total = total
        self.add(total if delta < 0 else delta, now)

    def add(self, count: int, now: float) -> None:
        if self._started is None:
            self._started = now
        if count <= 0:
            return
        second = math.floor(now)
        i = second % self.window
        if self._seconds[i] != second:
            self._seconds[i] = second
            self._counts[i] = 0
        self._counts[i] += count

    def total(self, now: float) -> int:
        """Events in the buckets still inside the window at `now`."""
        current = math.floor(now)
        oldest = current - self.window + 1
        return sum(
            c
            for s, c in zip(self._seconds, self._counts, strict=True)
            if s is not None and oldest <= s <= current
        )

    def rate(self, now: float) -> float:
        if self._started is None:
            return 0.0
        covered = (self.window - 1) + (now - math.floor(now))  # oldest bucket's start to now
        span = max(1.0, min(covered, now - self._started))
        return self.total(now) / span


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
            _check_endpoint(route)
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
        self.registry.register(_ManagerCollector(self))
        if route is not None:
            manager.route(route)(self._http_handler)
        manager.attach_instruments(self)

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
        _check_endpoint(endpoint)
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
        _check_endpoint(endpoint)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError("port must be an integer in 0..65535")
        listeners = await trio.open_tcp_listeners(port, host=host)
        sockname = listeners[0].socket.getsockname()
        address = (str(sockname[0]), int(sockname[1]))
        self._addresses[endpoint] = address
        try:
            async with trio.open_nursery() as nursery:
                handler = _ExporterHandler(self, endpoint)
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


# -- the collector: live state at scrape time -----------------------------------------------------
class _ManagerCollector(Collector):
    def __init__(self, metrics: WebSocketMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # no description: collected only on scrape, never at registration

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        st = m.get_stats()
        sid = st.server_id

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=["server_id"])
            g.add_metric([sid], value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=["server_id"])
            c.add_metric([sid], value)
            return c

        yield gauge(
            "trio_rt_connections",
            "Open connections (including handshakes in progress).",
            st.active_connections,
        )
        yield gauge("trio_rt_rooms", "Rooms on this server.", st.total_rooms)
        yield gauge(
            "trio_rt_room_memberships", "(connection, room) memberships.", st.room_memberships
        )
        yield gauge(
            "trio_rt_broker_subscriptions",
            "Broker channels subscribed to.",
            st.broker_subscriptions,
        )
        yield gauge(
            "trio_rt_table_subscriptions",
            "Client subscriptions to table changes.",
            st.table_subscriptions,
        )
        if st.memory_usage_mb is not None:
            yield gauge(
                "trio_rt_process_resident_memory_bytes",
                "Resident set size.",
                st.memory_usage_mb * 2**20,
            )
        yield gauge(
            "trio_rt_uptime_seconds", "Seconds since the manager was created.", st.uptime_seconds
        )
        rate = GaugeMetricFamily(
            "trio_rt_messages_per_second",
            "Messages per second over the sliding window, by direction (in: from clients).",
            labels=["server_id", "direction"],
        )
        rate.add_metric([sid, "in"], st.messages_per_second_in)
        rate.add_metric([sid, "out"], st.messages_per_second_out)
        yield rate
        yield gauge(
            "trio_rt_outbox_depth_max",
            "Messages queued for the most backed-up client.",
            st.outbox_depth_max,
        )
        yield gauge(
            "trio_rt_outbox_depth", "Messages queued for all clients.", st.outbox_depth_total
        )
        yield gauge("trio_rt_outbox_bytes", "Bytes queued for all clients.", st.outbox_bytes_total)
        yield gauge(
            "trio_rt_broker_backlog",
            "Messages waiting in the broker's own queues.",
            st.broker_backlog,
        )
        if st.change_stream_lag_seconds is not None:
            yield gauge(
                "trio_rt_change_stream_lag_seconds",
                "Change feed lag.",
                st.change_stream_lag_seconds,
            )

        s = m.manager.stats
        yield counter("trio_rt_messages_received", "Messages received from clients.", s.messages_in)
        yield counter("trio_rt_messages_sent", "Messages written to clients.", s.messages_out)
        yield counter("trio_rt_broadcasts", "Broadcasts published by this server.", s.broadcasts)
        yield counter(
            "trio_rt_deliveries", "Broadcast copies queued for local clients.", s.deliveries
        )
        yield counter("trio_rt_connections_opened", "Connections upgraded.", s.connections_opened)
        yield counter(
            "trio_rt_connections_closed",
            "Connections ended (including failed handshakes that had been registered).",
            s.connections_closed,
        )
        yield counter(
            "trio_rt_slow_consumer_disconnects",
            "Clients closed with 4000 because their outbox overflowed.",
            s.slow_consumers,
        )
        yield counter(
            "trio_rt_dropped_messages", "Messages dropped by drop_* policies.", s.dropped_messages
        )
        yield counter(
            "trio_rt_heartbeat_timeouts", "Clients closed with 4001.", s.heartbeat_timeouts
        )
        yield counter(
            "trio_rt_rate_limited_messages",
            "Client messages refused by the rate limits.",
            s.rate_limited,
        )
        yield counter(
            "trio_rt_tokens_expired", "Clients closed with 4004 (token expired).", s.tokens_expired
        )
        yield counter(
            "trio_rt_room_offsets_skipped",
            "Room offsets given up on after reorder_window (RoomHistory).",
            s.reorder_skipped,
        )
        yield counter(
            "trio_rt_room_messages_late",
            "Room messages delivered after a greater offset (their hole was skipped).",
            s.reorder_late,
        )
        errors = CounterMetricFamily(
            "trio_rt_errors",
            "Errors by kind: handler (app handler raised), protocol (bad client input), "
            "broker (broker I/O errors).",
            labels=["server_id", "kind"],
        )
        errors.add_metric([sid, "handler"], s.handler_errors)
        errors.add_metric([sid, "protocol"], s.protocol_errors)
        errors.add_metric([sid, "broker"], st.broker_errors)
        yield errors
        handshakes = CounterMetricFamily(
            "trio_rt_handshakes",
            "WebSocket handshakes by outcome (accepted, rejected) and reason.",
            labels=["server_id", "outcome", "reason"],
        )
        handshakes.add_metric([sid, "accepted", "ok"], s.connections_opened)
        for reason, n in sorted(s.handshakes_rejected.items()):
            handshakes.add_metric([sid, "rejected", reason], n)
        yield handshakes
        broker_stats = getattr(m.manager.broker, "stats", None)
        if broker_stats is not None:
            for field in ("published", "received", "dropped_while_down", "reconnects"):
                value = getattr(broker_stats, field, None)
                if isinstance(value, int):
                    yield counter(f"trio_rt_broker_{field}", f"Broker: {field}.", value)


# -- the exporter's HTTP ---------------------------------------------------------------------------
class _ExporterHandler:
    """One request, one response, then close. GET only; bounded size and time."""

    def __init__(self, metrics: WebSocketMetrics, endpoint: str) -> None:
        self._metrics = metrics
        self._endpoint = endpoint

    async def __call__(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                status, body, ctype = await self._respond(stream)
                head = (
                    f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n"
                    "Cache-Control: no-store\r\n"
                )
                if status.startswith("405"):
                    head += "Allow: GET\r\n"
                with trio.move_on_after(RESPONSE_TIMEOUT):
                    await stream.send_all(head.encode() + b"\r\n" + body)
                    # Lingering close: closing with unread input would reset the connection
                    # and could destroy the response before the client has read it.
                    await stream.send_eof()
                with trio.move_on_after(LINGER_TIMEOUT):
                    drained = 0
                    while drained < LINGER_BYTES:
                        chunk = await stream.receive_some(16384)
                        if not chunk:
                            break
                        drained += len(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the scraper went away
        except Exception:
            log.exception("metrics exporter failed to answer")

    async def _respond(self, stream: trio.SocketStream) -> tuple[str, bytes, str]:
        text = "text/plain; charset=utf-8"
        buf = bytearray()
        with trio.move_on_after(REQUEST_TIMEOUT):
            while b"\r\n\r\n" not in buf:
                if len(buf) > MAX_REQUEST_BYTES:
                    return "431 Request Header Fields Too Large", b"request too large\n", text
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                buf += chunk
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_REQUEST_BYTES:
                return "431 Request Header Fields Too Large", b"request too large\n", text
            return "408 Request Timeout", b"incomplete request\n", text
        if end > MAX_REQUEST_BYTES:
            return "431 Request Header Fields Too Large", b"request too large\n", text
        parts = bytes(buf[:end]).split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return "400 Bad Request", b"bad request\n", text
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target != self._endpoint.encode():
            return "404 Not Found", b"not found\n", text
        if method != b"GET":
            return "405 Method Not Allowed", b"method not allowed\n", text
        return "200 OK", self._metrics.exposition(), CONTENT_TYPE_LATEST


# -- helpers --------------------------------------------------------------------------------------
def _check_endpoint(endpoint: str) -> None:
    if not isinstance(endpoint, str) or not endpoint.startswith("/"):
        raise ValueError("a metrics endpoint is a path starting with '/'")
    if any(c in endpoint for c in " ?#\r\n"):
        raise ValueError("a metrics endpoint is a plain path (no spaces, query or fragment)")


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

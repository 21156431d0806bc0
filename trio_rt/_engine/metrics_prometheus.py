"""What Prometheus reads of a `WebSocketMetrics` (`metrics.py`): `ManagerCollector`, the live
state collected at scrape time, and `ExporterHandler`, the exporter's own small HTTP/1.1
listener (GET only, one response per connection, bounded size and time).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .metrics import WebSocketMetrics

__all__ = ["ExporterHandler", "ManagerCollector", "check_endpoint"]

log = logging.getLogger("trio_rt.metrics")

MAX_REQUEST_BYTES = 8192  # the exporter's request line and headers
REQUEST_TIMEOUT = 5.0  # to receive a whole request
RESPONSE_TIMEOUT = 10.0  # to send a whole response
LINGER_TIMEOUT = 1.0  # after the response, to let the client close first
LINGER_BYTES = 65536  # unread request bytes drained before closing


class ManagerCollector(Collector):
    """The manager's live state as Prometheus metrics, read at scrape time."""

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

        if st.worker is not None:  # which worker of `trio-rt serve --workers N` answered
            info = GaugeMetricFamily(
                "trio_rt_worker_info",
                "This process's worker number under trio-rt serve --workers N (always 1).",
                labels=["server_id", "worker"],
            )
            info.add_metric([sid, str(st.worker)], 1)
            yield info
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
        if st.presence is not None:
            yield from _presence_metrics(st.presence, gauge, counter)

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
        if m.publishers:
            # Bounded labels: AckOutcome is a closed set.
            acks = CounterMetricFamily(
                "trio_rt_publish_acks",
                "Acknowledged publishes by outcome: acked, duplicate (a resend answered with "
                "the first ack), refused, failed (nothing stored), unconfirmed (stored, the "
                "broker did not confirm), in_progress.",
                labels=["server_id", "outcome"],
            )
            totals: dict[str, int] = {}
            for publisher in m.publishers:
                for outcome, n in publisher.acks.items():
                    totals[str(outcome)] = totals.get(str(outcome), 0) + n
            for outcome, n in sorted(totals.items()):
                acks.add_metric([sid, outcome], n)
            yield acks
        if m.server_apis:
            # Bounded labels: the API's call names (or "other") and its error codes.
            calls = CounterMetricFamily(
                "trio_rt_api_calls",
                "Server API requests by call ('other': no such call) and outcome ('ok' or "
                "the error code).",
                labels=["server_id", "call", "outcome"],
            )
            for api in m.server_apis:
                for (call, outcome), n in sorted(api.calls.items()):
                    calls.add_metric([sid, call, outcome], n)
            yield calls
        cdc = getattr(m.manager.change_streams, "cdc", None)
        if cdc is not None:
            yield from _cdc_metrics(sid, cdc)
        broker_stats = getattr(m.manager.broker, "stats", None)
        if broker_stats is not None:
            for field in ("published", "received", "dropped_while_down", "reconnects"):
                value = getattr(broker_stats, field, None)
                if isinstance(value, int):
                    yield counter(f"trio_rt_broker_{field}", f"Broker: {field}.", value)


def _cdc_metrics(sid: str, cdc: Any) -> Iterator[Metric]:
    """What the CDC agents report (``CdcSource.agent_stats``; bounded labels: one agent per
    node, two reasons)."""
    skipped = CounterMetricFamily(
        "trio_rt_cdc_skipped_mutations",
        "Mutations a CDC agent skipped, by reason: undecodable (it could not decode it with "
        "an unchanged schema: its changes are lost, the agent logged an ERROR) and "
        "unknown_table (a table dropped before the agent loaded the schema). Counted since "
        "the agent last started.",
        labels=["server_id", "agent", "reason"],
    )
    alert = GaugeMetricFamily(
        "trio_rt_cdc_raw_alert",
        "1 while a CDC agent's cdc_raw holds more than its alert fraction of cdc_total_space "
        "(when full, Cassandra rejects writes to CDC tables).",
        labels=["server_id", "agent"],
    )
    for agent, stats in sorted(cdc.agent_stats.items()):
        skipped.add_metric([sid, agent, "undecodable"], stats.skipped_undecodable)
        skipped.add_metric([sid, agent, "unknown_table"], stats.skipped_unknown_table)
        alert.add_metric([sid, agent], 1 if stats.alert else 0)
    yield skipped
    yield alert


# -- the exporter's HTTP ---------------------------------------------------------------------------
class ExporterHandler:
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
def check_endpoint(endpoint: str) -> None:
    if not isinstance(endpoint, str) or not endpoint.startswith("/"):
        raise ValueError("a metrics endpoint is a path starting with '/'")
    if any(c in endpoint for c in " ?#\r\n"):
        raise ValueError("a metrics endpoint is a plain path (no spaces, query or fragment)")


def _presence_metrics(
    totals: Mapping[str, int],
    gauge: Callable[[str, str, float], Metric],
    counter: Callable[[str, str, float], Metric],
) -> Iterator[Metric]:
    """Presence (PresenceService.totals): this server's entries summed over rooms, never a
    label per room (label cardinality stays bounded however many rooms there are)."""
    yield gauge(
        "trio_rt_presence_rooms", "Rooms with presence entries on this server.", totals["rooms"]
    )
    yield gauge(
        "trio_rt_presence_users",
        "Presence entries (users per room) on this server, summed over rooms.",
        totals["users"],
    )
    yield gauge(
        "trio_rt_presence_connections",
        "Connections counted by presence on this server, summed over rooms.",
        totals["connections"],
    )
    yield gauge(
        "trio_rt_presence_largest_room_users",
        "Users of this server in its largest room.",
        totals["largest_room_users"],
    )
    yield counter(
        "trio_rt_presence_events_published",
        "presence_diff batches published.",
        totals["events_published"],
    )
    yield counter(
        "trio_rt_presence_events_delivered",
        "presence_diff copies queued for local members.",
        totals["events_delivered"],
    )
    yield counter(
        "trio_rt_presence_event_resyncs",
        "Event batches that overflowed into a resync (overflow policy 'resync').",
        totals["event_resyncs"],
    )
    yield counter(
        "trio_rt_presence_events_dropped",
        "Presence transitions dropped: too many rooms waiting for their batch.",
        totals["events_dropped"],
    )
    yield counter(
        "trio_rt_presence_write_errors",
        "Presence store writes that failed (retried).",
        totals["write_errors"],
    )

"""WebSocketMetrics: sliding-window rates (injected clock), get_stats, Prometheus on the main
port and on its own listener (scraped with a real HTTP client, parsed as exposition format),
and the Grafana dashboard against what the exporter really exposes."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus
from websockets.trio.client import connect

from trio_rt import Connection, Reject, WebSocketManager
from trio_rt._engine.metrics import CAMEL_CASE_NAMES, SlidingWindowRate, WebSocketMetrics

from ..conftest import client, wait_until

DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana" / "trio_rt-dashboard.json"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# -- helpers ---------------------------------------------------------------------------------------
def fetch(url: str, method: str = "GET") -> tuple[int, str, str]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


async def scrape(url: str) -> tuple[Samples, set[str]]:
    status, ctype, body = await trio.to_thread.run_sync(fetch, url)
    assert status == 200, body
    assert ctype == CONTENT_TYPE_LATEST
    samples: Samples = {}
    families: set[str] = set()
    for family in text_string_to_metric_families(body):
        families.add(family.name)
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, families


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def sum_of(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def raw_http(address: tuple[str, int], request: bytes) -> bytes:
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(request)
        out = bytearray()
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                out += chunk
    return bytes(out)


# -- sans-IO rates ---------------------------------------------------------------------------------
def test_rate_first_observation_is_the_baseline() -> None:
    r = SlidingWindowRate(10)
    assert r.rate(5.0) == 0.0
    r.observe_total(1000, 100.0)  # what happened before metrics existed does not count
    assert r.rate(100.0) == 0.0
    r.observe_total(1050, 100.5)
    assert r.rate(100.5) == 50.0  # less than a second of history: divided by one second
    r.observe_total(1100, 105.0)
    assert r.rate(105.0) == pytest.approx(100 / 5.0)


def test_rate_steady_stream_and_expiry() -> None:
    r = SlidingWindowRate(10)
    total = 0
    r.observe_total(total, 0.0)
    for second in range(1, 31):
        total += 20
        r.observe_total(total, float(second))
    # Buckets 21..30 are in the window, covering 9 s plus the current second's start.
    assert r.total(30.0) == 200
    assert r.rate(30.0) == pytest.approx(200 / 9.0)
    assert r.rate(30.5) == pytest.approx(200 / 9.5)
    assert r.rate(35.0) == pytest.approx(100 / 9.0)  # half the buckets expired
    assert r.rate(41.0) == 0.0  # all expired; the ring slots get reused below
    r.observe_total(total + 7, 41.2)
    assert r.total(41.2) == 7


def test_rate_counter_reset_and_add() -> None:
    r = SlidingWindowRate(5)
    r.observe_total(100, 10.0)
    r.observe_total(3, 11.0)  # the counter went down: a reset, counts from zero
    assert r.total(11.0) == 3
    r.add(10, 11.9)
    r.add(0, 12.0)
    r.add(-4, 12.0)
    assert r.total(12.0) == 13
    with pytest.raises(ValueError):
        SlidingWindowRate(0)
    with pytest.raises(ValueError):
        SlidingWindowRate(2.5)  # type: ignore[arg-type]


async def test_get_stats_rates_with_injected_clock(
    make_manager: Callable[..., WebSocketManager],
) -> None:
    clock = FakeClock()
    manager = make_manager()
    metrics = WebSocketMetrics(manager, window=10, clock=clock)
    metrics.sample()  # baseline
    for _ in range(10):  # ten seconds: 30 in, 60 out per second
        clock.now += 1
        manager.stats.messages_in += 30
        manager.stats.messages_out += 60
        metrics.sample()
    stats = metrics.get_stats()
    assert stats.messages_per_second_in == pytest.approx(300 / 9.0)
    assert stats.messages_per_second_out == pytest.approx(600 / 9.0)
    clock.now += 20  # quiet since
    stats = metrics.get_stats()
    assert stats.messages_per_second_in == 0.0 and stats.messages_per_second_out == 0.0
    assert stats.messages_in_total == 300 and stats.messages_out_total == 600
    camel = stats.to_dict(camel_case=True)
    assert set(CAMEL_CASE_NAMES.values()) <= set(camel)
    assert camel["activeConnections"] == 0 and camel["totalRooms"] == 0
    assert camel["memoryUsage"] is not None and camel["memoryUsage"] > 1.0  # MB, not bytes
    assert stats.to_dict()["handshakes_rejected"] == {}
    # The old names still work, with a DeprecationWarning.
    with pytest.warns(DeprecationWarning, match="camel_case"):
        assert stats.to_dict(seed_names=True) == camel
    with pytest.warns(DeprecationWarning, match="CAMEL_CASE_NAMES"):
        from trio_rt._engine.metrics import SEED_NAMES
    assert SEED_NAMES is CAMEL_CASE_NAMES
    metrics.close()
    assert manager.instruments is None


# -- config ----------------------------------------------------------------------------------------
def test_bad_config(make_manager: Callable[..., WebSocketManager]) -> None:
    manager = make_manager()
    with pytest.raises(ValueError):
        WebSocketMetrics(manager, route="metrics")
    with pytest.raises(ValueError):
        WebSocketMetrics(manager, sample_interval=0)
    with pytest.raises(ValueError):
        WebSocketMetrics(manager, window=0)
    assert manager.instruments is None  # failed constructions leave nothing behind
    metrics = WebSocketMetrics(manager)
    with pytest.raises(RuntimeError):
        WebSocketMetrics(manager, route=None)  # one per manager
    for bad in (-1, 65536, 3.5, True):
        with pytest.raises(ValueError):
            metrics.export_to_prometheus(port=bad)  # type: ignore[arg-type]
    for endpoint in ("ws-metrics", "", "/a b", "/m?x=1"):
        with pytest.raises(ValueError):
            metrics.export_to_prometheus(endpoint=endpoint, port=0)
    metrics.export_to_prometheus(port=0)
    with pytest.raises(ValueError):
        metrics.export_to_prometheus(port=0)  # the same endpoint twice
    with pytest.raises(RuntimeError):
        metrics.prometheus_address()  # not running


# -- end to end ------------------------------------------------------------------------------------
async def test_scrape_both_endpoints_with_live_clients(
    make_manager: Callable[..., WebSocketManager],
) -> None:
    manager = make_manager(max_connections=3)

    @manager.on_connection
    async def auth(conn: Connection) -> None:
        if conn.request.query.get("token") == ["bad"]:
            raise Reject(401, "bad token")

    @manager.on_message("chat")
    async def chat(conn: Connection, message: dict[str, Any]) -> None:
        await manager.broadcast_to_room(message["payload"]["room"], {"type": "said"})

    @manager.on_message("boom")
    async def boom(conn: Connection, message: dict[str, Any]) -> None:
        raise RuntimeError("handler failure for the errors counter")

    metrics = WebSocketMetrics(manager)
    metrics.export_to_prometheus(endpoint="/ws-metrics", port=0)
    async with manager, metrics:
        host, port = metrics.prometheus_address("/ws-metrics")
        urls = (
            f"http://{host}:{port}/ws-metrics",
            f"http://{manager.address[0]}:{manager.port}/metrics",
        )
        with pytest.raises(InvalidStatus) as rejected:
            async with connect(manager.url + "?token=bad"):
                pass
        assert rejected.value.response.status_code == 401

        async with client(manager) as a, client(manager) as b, client(manager) as c:
            for cl, room in ((a, "red"), (b, "red"), (c, "blue")):
                assert (await cl.request({"type": "join_room", "room": room}))["type"] == (
                    "room_joined"
                )
            with pytest.raises(InvalidStatus) as full:
                async with connect(manager.url):
                    pass
            assert full.value.response.status_code == 503
            for _ in range(5):
                await a.send({"type": "chat", "payload": {"room": "red"}})
                assert (await a.recv())["type"] == "said"
                assert (await b.recv())["type"] == "said"
            assert (await c.request({"type": "boom"}))["code"] == "internal_error"
            await wait_until(lambda: manager.stats.messages_out >= 3 + 3 + 10 + 1)

            results = []
            for url in urls:
                results.append(await scrape(url))
            (samples, families), (main_samples, main_families) = results
            assert families == main_families  # the same metrics on both ports
            sid = manager.server_id
            assert value(samples, "trio_rt_connections", server_id=sid) == 3
            assert value(main_samples, "trio_rt_connections", server_id=sid) == 3
            assert value(samples, "trio_rt_rooms", server_id=sid) == 2
            assert value(samples, "trio_rt_room_memberships", server_id=sid) == 3
            assert value(samples, "trio_rt_messages_received_total", server_id=sid) == 9
            assert value(samples, "trio_rt_messages_sent_total", server_id=sid) >= 17
            assert value(samples, "trio_rt_broadcasts_total", server_id=sid) == 5
            assert value(samples, "trio_rt_deliveries_total", server_id=sid) == 10
            assert value(samples, "trio_rt_process_resident_memory_bytes", server_id=sid) > 2**20
            assert value(samples, "trio_rt_outbox_depth_max", server_id=sid) >= 0
            assert value(samples, "trio_rt_errors_total", server_id=sid, kind="handler") == 1
            handshakes = "trio_rt_handshakes_total"
            assert value(samples, handshakes, server_id=sid, outcome="accepted", reason="ok") == 3
            assert (
                value(samples, handshakes, server_id=sid, outcome="rejected", reason="http_401")
                == 1
            )
            assert (
                value(samples, handshakes, server_id=sid, outcome="rejected", reason="server_full")
                == 1
            )
            chat_count = "trio_rt_handler_duration_seconds_count"
            assert value(samples, chat_count, server_id=sid, type="chat") == 5
            assert value(samples, chat_count, server_id=sid, type="boom") == 1
            fanout_count = "trio_rt_broadcast_fanout_duration_seconds_count"
            assert value(samples, fanout_count, server_id=sid) == 5
            assert value(samples, "trio_rt_broadcast_recipients_sum", server_id=sid) == 10
            # a bucket is cumulative: +Inf holds every observation
            assert (
                value(samples, "trio_rt_broadcast_fanout_duration_seconds_bucket", server_id=sid,
                      le="+Inf")
                == 5
            )  # fmt: skip

            stats = metrics.get_stats()
            assert stats.active_connections == 3 and stats.total_rooms == 2
            assert stats.broker_subscriptions >= 2 + 2  # all, servers, two rooms
            assert stats.handshakes_rejected == {"http_401": 1, "server_full": 1}
            assert stats.messages_per_second_in > 0

        await wait_until(lambda: not manager.connections)
        samples, _ = await scrape(urls[0])
        assert value(samples, "trio_rt_connections", server_id=manager.server_id) == 0
        assert value(samples, "trio_rt_rooms", server_id=manager.server_id) == 0
    with pytest.raises(RuntimeError):
        metrics.prometheus_address()  # the exporter ended with `run`


async def test_exporter_http_edges(make_manager: Callable[..., WebSocketManager]) -> None:
    manager = make_manager()
    metrics = WebSocketMetrics(manager, route=None)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(metrics.serve_prometheus, "/m", 0)
        ok = await raw_http(address, b"GET /m?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = ok.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"Connection: close" in head
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        assert len(body) == length and b"trio_rt_connections" in body
        assert (await raw_http(address, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404 ")
        post = await raw_http(address, b"POST /m HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert post.startswith(b"HTTP/1.1 405 ") and b"Allow: GET" in post
        assert (await raw_http(address, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        huge = b"GET /m HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n"
        assert (await raw_http(address, huge)).startswith(b"HTTP/1.1 431 ")
        # A client that sends half a request and goes away does not disturb the listener.
        stream = await trio.open_tcp_stream(*address)
        await stream.send_all(b"GET /m HTT")
        await stream.aclose()
        status, _, _ = await trio.to_thread.run_sync(fetch, f"http://{address[0]}:{address[1]}/m")
        assert status == 200
        nursery.cancel_scope.cancel()


async def test_export_after_run_started(make_manager: Callable[..., WebSocketManager]) -> None:
    manager = make_manager()
    metrics = WebSocketMetrics(manager, sample_interval=0.05)
    async with manager, metrics:
        metrics.export_to_prometheus(endpoint="/late", port=0)
        await wait_until(lambda: "/late" in metrics._addresses)
        host, port = metrics.prometheus_address("/late")
        samples, _ = await scrape(f"http://{host}:{port}/late")
        assert value(samples, "trio_rt_connections", server_id=manager.server_id) == 0
        with pytest.raises(RuntimeError):
            await metrics.run()  # already running


# -- the Grafana dashboard -------------------------------------------------------------------------
async def test_grafana_dashboard_uses_exposed_metrics(
    make_manager: Callable[..., WebSocketManager],
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert any(i.get("name") == "DS_PROMETHEUS" for i in dashboard["__inputs"])
    manager = make_manager()

    @manager.on_message("x")
    async def x(conn: Connection, message: dict[str, Any]) -> None:
        await manager.broadcast({"type": "y"})

    metrics = WebSocketMetrics(manager)
    async with manager, metrics, client(manager) as c:
        await c.send({"type": "x"})
        await c.recv()
        _, families = await scrape(f"http://127.0.0.1:{manager.port}/metrics")
    exposed: set[str] = set()
    for name in families:  # the series names a query can use
        exposed |= {name, f"{name}_total", f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    panels = dashboard["panels"]
    titles = " | ".join(p["title"].lower() for p in panels)
    for needed in ("connections", "messages", "rooms", "rss", "outbox", "slow", "handler",
                   "fan-out", "handshake"):  # fmt: skip
        assert needed in titles
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\btrio_rt_[a-z_]+", target["expr"]))
            assert names, target["expr"]
            assert names <= exposed, (panel["title"], names - exposed)

"""Acks by outcome and server API calls by call and outcome, as Prometheus series
(WebSocketMetrics.observe_publisher / observe_server_api)."""

from __future__ import annotations

from typing import Any

import trio

from trio_rt import APIKey, Publisher, ServerAPI, WebSocketManager
from trio_rt._engine.metrics import WebSocketMetrics

from ..conftest import client
from .test_server_api import call


async def test_acks_and_api_calls_are_exported_with_bounded_labels(make_manager: Any) -> None:
    manager: WebSocketManager = make_manager()
    publisher = Publisher(manager)
    api = ServerAPI(manager, keys=[APIKey("ops", "ops-secret-0123456789")])
    metrics = WebSocketMetrics(manager, route=None)
    metrics.observe_publisher(publisher)
    metrics.observe_server_api(api)
    async with manager, client(manager) as c:
        await c.request({"type": "join_room", "room": "r"})
        await c.send({"type": "publish", "room": "r", "data": 1, "id": "a"})
        await c.recv()
        await c.recv()
        assert (await c.request({"type": "publish", "room": "r", "data": 1, "id": "a"}))[
            "type"
        ] == "ack"
        assert (await c.request({"type": "publish", "room": "x", "data": 1, "id": "b"}))[
            "code"
        ] == "not_in_room"
        key = "ops-secret-0123456789"
        assert (await call(api, "/api/publish", {"room": "r", "data": 2}, key=key))[0] == 200
        assert (await call(api, "/api/publish", {"room": "r"}, key=key))[0] == 400
        assert (await call(api, "/api/kick", {}, key=None))[0] == 401
        assert (await call(api, "/api/" + "z" * 50, {}, key=key))[0] == 404
        await trio.lowlevel.checkpoint()
        text = metrics.exposition().decode()
    sid = manager.server_id
    # The client's publish and the API's (its own publisher): summed.
    assert f'trio_rt_publish_acks_total{{outcome="acked",server_id="{sid}"}} 2.0' in text
    assert f'trio_rt_publish_acks_total{{outcome="duplicate",server_id="{sid}"}} 1.0' in text
    assert f'trio_rt_publish_acks_total{{outcome="refused",server_id="{sid}"}} 1.0' in text
    assert "trio_rt_api_calls_total" in text
    for call_name, outcome in [
        ("publish", "ok"),
        ("publish", "invalid_field"),
        ("kick", "unauthorized"),
        ("other", "not_found"),  # an unknown path is never a label of its own
    ]:
        assert f'call="{call_name}",outcome="{outcome}",server_id="{sid}"}} 1.0' in text
    assert "z" * 50 not in text

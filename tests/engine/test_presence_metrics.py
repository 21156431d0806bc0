"""Presence in WebSocketMetrics: totals over rooms in the stats and in Prometheus, with no
label per room (label cardinality stays bounded however many rooms there are)."""

from __future__ import annotations

from trio_rt import PresenceService, WebSocketManager, WebSocketMetrics

from ..conftest import client
from .test_presence import join, members_of, tag_user


async def test_presence_totals_without_a_label_per_room() -> None:
    manager = WebSocketManager(host="127.0.0.1", port=0, heartbeat_interval=None)
    tag_user(manager)
    PresenceService(manager)
    metrics = WebSocketMetrics(manager)
    assert metrics.get_stats().presence is not None
    async with (
        manager,
        client(manager, "/?user=a") as a,
        client(manager, "/?user=a") as a2,
        client(manager, "/?user=b") as b,
    ):
        for c, room in ((a, "r1"), (a2, "r1"), (b, "r1"), (b, "r2")):
            await join(c, room)
        assert await members_of(a, "r1") == [("a", 2), ("b", 1)]
        stats = metrics.get_stats()
        assert stats.presence is not None
        assert (
            stats.presence["rooms"],
            stats.presence["users"],
            stats.presence["connections"],
            stats.presence["largest_room_users"],
        ) == (2, 3, 4, 2)
        assert stats.to_dict()["presence"]["users"] == 3
        text = metrics.exposition().decode()
        assert 'trio_rt_presence_users{server_id="' in text
        assert "trio_rt_presence_connections{" in text
        lines = [ln for ln in text.splitlines() if ln.startswith("trio_rt_presence")]
        assert lines and not [ln for ln in lines if "r1" in ln or "r2" in ln or "room=" in ln]


def test_without_presence_nothing_is_reported() -> None:
    manager = WebSocketManager(heartbeat_interval=None)
    metrics = WebSocketMetrics(manager)
    assert metrics.get_stats().presence is None
    assert "trio_rt_presence" not in metrics.exposition().decode()
    assert metrics.get_stats().to_dict()["presence"] is None

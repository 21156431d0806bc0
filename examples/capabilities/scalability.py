"""Capability section "Scalability and Load Balancing", in trio_rt.

- ``scaling: {type: 'redis'}`` becomes ``broker=RedisBroker(url)``: broadcasts reach every room
  member on every server, so a client may connect to any server; stickiness is optional.
- The TypeScript original's ``StickySessionManager`` with ``hashFunction: userId % 3`` becomes
  rendezvous hashing over the *live* servers of a ``ServerRegistry`` (heartbeats in Redis): when a
  server joins or leaves, only the users it owned move.
- ``on('cross_server_message')`` exists as is: servers message each other with
  ``send_to_servers``; room broadcasts need no relay (the broker already crosses servers).
"""

from __future__ import annotations

import logging
from typing import Any

from trio_rt import RedisBroker, ServerRegistry, WebSocketManager

log = logging.getLogger("examples.capabilities.scalability")


def build_app(redis_url: str, **options: Any) -> WebSocketManager:
    scalable_ws_manager = WebSocketManager(broker=RedisBroker(redis_url), **options)

    # Cross-server messages (not needed for room broadcasts: those cross servers by themselves)
    @scalable_ws_manager.on("cross_server_message")
    async def on_cross_server_message(message: dict[str, Any], origin: str) -> None:
        log.info("server %s says %r", origin, message)
        if message.get("type") == "announce":
            # Each server tells its own clients: broadcast() would reach all servers again.
            for conn in list(scalable_ws_manager.connections.values()):
                await conn.send({"type": "announcement", "text": message.get("text")})

    return scalable_ws_manager


def sticky_registry(redis_url: str, manager: WebSocketManager, address: str) -> ServerRegistry:
    """The TypeScript original's StickySessionManager: `await registry.owner(user_id)` is the server
    for a user, among the servers alive right now."""
    return ServerRegistry(redis_url, manager.server_id, address)

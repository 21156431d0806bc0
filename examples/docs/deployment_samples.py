"""The samples of docs/deployment.md, run by tests/integration/test_doc_samples.py against a real
Redis."""

from __future__ import annotations

from typing import Any

from trio_rt import WebSocketManager


def web_server(
    server_id: str = "web-1",
    port: int = 3001,
    redis_url: str = "redis://redis.internal:6379/0",
) -> WebSocketManager:
    # --8<-- [start:server]
    from trio_rt import RedisBroker, WebSocketManager

    manager = WebSocketManager(
        host="127.0.0.1",
        port=port,  # 3001; 3002, 3003 for the others
        server_id=server_id,  # "web-1": stable names make logs and /health readable
        broker=RedisBroker(redis_url),  # "redis://redis.internal:6379/0"
    )
    # --8<-- [end:server]
    return manager


# --8<-- [start:workers]
def build_app(**options: Any) -> WebSocketManager:
    """``trio-rt serve --workers 4 myapp:build_app``: the command's options (host, port, and
    for a worker reuse_port and worker_id) go on to WebSocketManager."""
    import os

    from trio_rt import RedisBroker, WebSocketManager

    options.setdefault("server_id", "web-1")  # each worker's is web-1-w0, web-1-w1, ...
    manager = WebSocketManager(
        broker=RedisBroker(os.environ.get("REDIS_URL", "redis://redis.internal:6379/0")),
        **options,
    )

    @manager.on_message("chat")
    async def chat(conn: Any, message: dict[str, Any]) -> None:
        # reaches the room's members on every worker (and every machine), through Redis
        await manager.broadcast_to_room(str(message["room"]), {"type": "chat", **message})

    return manager


# --8<-- [end:workers]


async def main(
    redis_url: str = "redis://redis.internal:6379/0",
    port: int = 3001,
    address: str = "ws://10.0.0.11:3001",
    serve_forever: bool = True,
) -> None:
    """One server of the deployment, registered under ``web-1`` at `address`; with
    ``serve_forever=False`` it returns after printing what the registry knows."""
    # --8<-- [start:registry]
    import trio

    from trio_rt import RedisBroker, ServerRegistry, WebSocketManager

    async with trio.open_nursery() as nursery:
        manager = WebSocketManager(
            port=port,  # 3001
            server_id="web-1",
            broker=RedisBroker(redis_url),  # "redis://redis.internal:6379/0"
        )
        registry = ServerRegistry(
            redis_url,
            "web-1",
            address,  # how clients reach this server: "ws://10.0.0.11:3001"
            heartbeat_interval=2.0,
            ttl=6.0,
        )
        await nursery.start(registry.run)  # or: async with registry: ...
        await nursery.start(manager.serve)

        print(await registry.live_servers())  # {"web-1": "ws://10.0.0.11:3001", ...}
        print(await registry.owner("alice"))  # ("web-2", "ws://10.0.0.12:3001")
        print(registry.cached_owner("alice"))  # same, from the last heartbeat's snapshot
        # --8<-- [end:registry]
        if not serve_forever:
            nursery.cancel_scope.cancel()

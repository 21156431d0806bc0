"""The samples of docs/deployment.md, run by tests/test_doc_samples.py against a real Redis."""

from __future__ import annotations

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

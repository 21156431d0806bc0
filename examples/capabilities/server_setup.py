"""Capability section "WebSocket Server Setup", in trio_rt.

The TypeScript original's ``new WebSocketManager(client, {port, maxConnections, heartbeatInterval,
compression})`` followed by ``await wsManager.start()`` becomes a manager served inside ``async
with``: the server runs while the block runs, and stops gracefully (close 1001 to every client) when
it ends.
"""

from __future__ import annotations

import trio

from trio_rt import WebSocketManager, serve_until_signalled


def build_app(port: int = 3001, **options: object) -> WebSocketManager:
    return WebSocketManager(
        port=port,
        max_connections=10_000,
        heartbeat_interval=30.0,  # seconds (the TypeScript original's 30000 ms)
        compression=True,  # permessage-deflate
        **options,  # type: ignore[arg-type]
    )


async def main(
    port: int = 3001, *, task_status: trio.TaskStatus[WebSocketManager] = trio.TASK_STATUS_IGNORED
) -> None:
    async with build_app(port) as ws_manager:
        task_status.started(ws_manager)
        await trio.sleep_forever()


if __name__ == "__main__":  # Ctrl-C or SIGTERM: a graceful shutdown, exit 0
    trio.run(serve_until_signalled, build_app())

"""The one asyncio loop (trio-asyncio) that Redis clients run in.

redis-py's client is asyncio; trio_rt runs it inside a trio-asyncio loop. There is one loop per
owner (the manager opens it when a component needs it; a component run on its own opens its
own), and code crosses the bridge once per direction with long-lived tasks, never once per
message (measured: ~91 us per crossing; docs/development.md).

Importing trio_asyncio patches asyncio globally, so this module is only imported when a Redis
component is used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio_asyncio

__all__ = ["ensure_loop"]


@asynccontextmanager
async def ensure_loop() -> AsyncIterator[None]:
    """Run the block inside a trio-asyncio loop: the current one, or a new one it owns."""
    if trio_asyncio.current_loop.get() is not None:
        yield
        return
    async with trio_asyncio.open_loop():
        yield

"""The one asyncio loop (trio-asyncio) that Redis clients run in.

redis-py's client is asyncio; trio_rt runs it inside a trio-asyncio loop. There is one loop per
owner (the manager opens it when a component needs it; a component run on its own opens its
own), and code crosses the bridge once per direction with long-lived tasks, never once per
message (measured: ~91 us per crossing; docs/development.md).

Two trio-asyncio loops in one thread confuse asyncio's notion of the running loop (futures get
bound to the wrong loop and cancellations are lost), so `ensure_loop` refuses to open a second
one: components that run side by side in one process (two managers in a test) must share a loop
opened above them with ``async with trio_asyncio.open_loop():``.

Importing trio_asyncio patches asyncio globally, so this module is only imported when a Redis
component is used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio_asyncio

__all__ = ["ensure_loop"]

_loops_opened_here = 0


@asynccontextmanager
async def ensure_loop() -> AsyncIterator[None]:
    """Run the block inside a trio-asyncio loop: the current one, or a new one it owns.

    Raises RuntimeError if a loop opened by another branch of the task tree is running.
    """
    global _loops_opened_here
    if trio_asyncio.current_loop.get() is not None:
        yield
        return
    if _loops_opened_here:
        raise RuntimeError(
            "another trio-asyncio loop is already running in this thread; components that "
            "run side by side (e.g. two Redis-backed managers) must share one loop: wrap them "
            "in `async with trio_asyncio.open_loop():`"
        )
    _loops_opened_here += 1
    try:
        async with trio_asyncio.open_loop():
            yield
    finally:
        _loops_opened_here -= 1

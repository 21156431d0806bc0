"""The `gc_freeze_interval` option: keep long-lived objects out of automatic GC runs."""

from __future__ import annotations

import gc

import trio

__all__ = ["run_gc_freezer"]


async def run_gc_freezer(interval: float) -> None:
    """Every `interval` s: collect generations 0-1, then `gc.freeze()` what survives (the
    connections, rooms, the app's own long-lived state), until cancelled.

    Automatic collections then only traverse what is younger than the last freeze: at 10,000
    connections a full collection otherwise walks ~1 million objects and blocks the loop for
    ~1 s, every few seconds (docs/performance.md). Frozen objects are still freed by
    reference counting; frozen *cyclic* garbage waits for every 10th round, which unfreezes
    and runs a full collection first. On exit everything is unfrozen (gc.unfreeze()).
    Process-wide: the manager runs it only with the option set.
    """
    rounds = 0
    try:
        gc.collect(1)
        gc.freeze()
        while True:
            await trio.sleep(interval)
            rounds += 1
            if rounds % 10 == 0:
                gc.unfreeze()
                gc.collect()
            else:
                gc.collect(1)
            gc.freeze()
    finally:
        gc.unfreeze()

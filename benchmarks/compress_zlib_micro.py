"""Micro-benchmark: per-connection deflate vs one shared compressed frame per broadcast.

With ``server_no_context_takeover`` every compressed message is independent of the
connection, so one broadcast could compress once and send the same frame to every member.
Today each connection compresses for itself: websockets' ``PerMessageDeflate.encode`` makes a
fresh ``zlib.compressobj`` per message (no context takeover), then ``compress`` +
``flush(Z_SYNC_FLUSH)`` and strips the 4-byte tail. This times, for one ~120-byte bench
payload and a room of ``--members`` connections:

* ``per connection``: that sequence once per member (what trio_rt's writer and websockets'
  ``broadcast()`` pay per broadcast);
* ``shared``: the sequence once per broadcast;
* for reference, ``context takeover``: a long-lived compressobj per connection (no fresh
  context, the other negotiation outcome).

Settings: websockets' defaults for ``compression="deflate"`` (window 2^12, memLevel 5, level
6); ``--wbits 15 --mem-level 8`` for zlib's defaults.

Run: ``python -m benchmarks.compress_zlib_micro [--members 200] [--broadcasts 2000]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import zlib


def payload(size: int) -> bytes:
    message = {"type": "bench", "seq": 1234, "t": time.monotonic_ns(), "pad": "x" * size}
    return json.dumps(message).encode()


def fresh(data: bytes, wbits: int, mem_level: int) -> bytes:
    enc = zlib.compressobj(wbits=-wbits, memLevel=mem_level)
    return (enc.compress(data) + enc.flush(zlib.Z_SYNC_FLUSH))[:-4]


def bench(
    members: int, broadcasts: int, data: bytes, wbits: int, mem_level: int
) -> dict[str, float]:
    """Seconds per broadcast (median of 5 repeats) for the three strategies."""
    encoders = [zlib.compressobj(wbits=-wbits, memLevel=mem_level) for _ in range(members)]
    results: dict[str, list[float]] = {"per connection": [], "shared": [], "context takeover": []}
    n = max(1, broadcasts // 10)
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            for _ in range(members):
                fresh(data, wbits, mem_level)
        results["per connection"].append((time.perf_counter() - t0) / n)
        t0 = time.perf_counter()
        for _ in range(n * 10):
            frame = fresh(data, wbits, mem_level)
            for _ in range(members):
                _ = frame  # the shared frame is reused as is
        results["shared"].append((time.perf_counter() - t0) / (n * 10))
        t0 = time.perf_counter()
        for _ in range(n):
            for enc in encoders:
                (enc.compress(data) + enc.flush(zlib.Z_SYNC_FLUSH))[:-4]
        results["context takeover"].append((time.perf_counter() - t0) / n)
    return {k: statistics.median(v) for k, v in results.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--broadcasts", type=int, default=2000)
    parser.add_argument("--size", type=int, default=70, help="pad length (payload ~120 bytes)")
    parser.add_argument("--wbits", type=int, default=12)
    parser.add_argument("--mem-level", type=int, default=5)
    args = parser.parse_args(argv)
    data = payload(args.size)
    compressed = fresh(data, args.wbits, args.mem_level)
    print(
        f"payload {len(data)} bytes -> {len(compressed)} bytes deflated"
        f" (window 2^{args.wbits}, memLevel {args.mem_level}); {args.members} members"
    )
    r = bench(args.members, args.broadcasts, data, args.wbits, args.mem_level)
    per = r["per connection"]
    for name, seconds in r.items():
        print(
            f"{name:<18} {seconds * 1e6:9.1f} us per broadcast"
            f"  {seconds / args.members * 1e6:7.3f} us per delivery"
        )
    print(
        f"RATIO per connection / shared: {per / r['shared']:.0f}x;"
        f" saving {(per - r['shared']) / args.members * 1e6:.2f} us per delivery"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

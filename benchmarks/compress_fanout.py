"""Fan-out with permessage-deflate (no context takeover): trio_rt vs websockets ``broadcast()``.

Kinds, alternating run by run (``benchmarks.peer_harness``, the method of ``benchmarks.fanout``):

* ``trio_rt+deflate``: ``servers/latency_trio_rt.py --compression``; the clients offer
  ``permessage-deflate; server_no_context_takeover; client_no_context_takeover``
  (``benchmarks.peer_loadgen --deflate``). trio_rt compresses each broadcast once and writes
  that frame to every client (directly when the socket is idle);
* ``trio_rt+deflate-perconn``: the same with ``--per-connection-deflate``: every connection
  compresses each message itself (what trio_rt did before the shared frame), for comparison;
* ``trio_rt``: the same server without compression (the reference; the first kind);
* ``baseline+deflate``: ``servers/latency_baseline.py --compression`` (websockets' defaults:
  window 2^12, memLevel 5); ``broadcast()`` compresses once per connection too;
* ``baseline``: the same without compression (``--servers`` to include it).

The load generator inflates each compressed frame (fresh raw-inflate context per message), so
its CPU per delivery rises: watch its ``gen`` column. Estimating what a shared compressed frame
would save: ``benchmarks.compress_zlib_micro``.

Run: ``python -m benchmarks.compress_fanout [--clients 200] [--messages 1000] [--runs 3]
[--servers trio_rt,trio_rt+deflate,baseline+deflate] [--json out.json]``.
"""

from __future__ import annotations

import sys

from benchmarks import peer_harness
from benchmarks.peer_harness import Defaults, Kind

TRIO = "benchmarks.servers.latency_trio_rt"
BASE = "benchmarks.servers.latency_baseline"
DEFLATE = ("--compression",)
DEFAULTS = Defaults(clients=200, messages=1000, servers="trio_rt,trio_rt+deflate,baseline+deflate")
KINDS = {
    "trio_rt": Kind("trio_rt", TRIO),
    "trio_rt+deflate": Kind("trio_rt+deflate", TRIO, DEFLATE, ("--deflate",)),
    # the same, every connection compressing for itself (no shared compressed frame)
    "trio_rt+deflate-perconn": Kind(
        "trio_rt+deflate-perconn",
        TRIO,
        (*DEFLATE, "--per-connection-deflate"),
        ("--deflate",),
    ),
    "baseline": Kind("baseline", BASE),
    "baseline+deflate": Kind("baseline+deflate", BASE, DEFLATE, ("--deflate",)),
}


def main(argv: list[str] | None = None) -> int:
    return peer_harness.main("compress_fanout", __doc__.splitlines()[0], KINDS, DEFAULTS, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Delivery latency at half the maximum broadcast rate: trio_rt against the baseline.

Two phases, each with trio_rt (``servers/latency_trio_rt.py``) and the baseline
(``servers/latency_baseline.py``, websockets asyncio ``broadcast()``) alternating run by run,
N clients in one room (``benchmarks.peer_harness``, the method of ``benchmarks.fanout``):

1. **max rate**: M broadcasts as fast as possible (the existing fan-out run). A kind's maximum
   broadcast rate is its median deliveries/s / N.
2. **paced**: ``bench_start`` carries ``"rate": R`` with R = half the LOWER of the two maxima
   (the same offered load for both, below both saturation points; ``--rate`` overrides phase
   1); the servers send broadcast i at ``start + i / R`` (absolute schedule) for
   ``--paced-seconds``. Latency (receipt - the server's ``t`` stamped just before the
   broadcast) then measures delivery, not queueing behind a burst: p50 / p99 per kind.

Run: ``python -m benchmarks.latency_half_rate [--clients 200] [--messages 2000] [--runs 3]
[--paced-seconds 5] [--rate R] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.peer_harness import Kind, run_all, write_json

TRIO = "benchmarks.servers.latency_trio_rt"
BASE = "benchmarks.servers.latency_baseline"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--messages", type=int, default=2000, help="phase 1 broadcasts")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=70)
    parser.add_argument("--paced-seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=0.0, help="skip phase 1: broadcasts/s")
    parser.add_argument("--max-other", type=float, default=0.25)
    parser.add_argument("--wait-idle", type=float, default=10.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    common = {
        "clients": args.clients,
        "size": args.size,
        "runs": args.runs,
        "max_other": args.max_other,
        "wait_idle": args.wait_idle,
    }
    payload: dict[str, object] = {}
    rate = args.rate
    if rate <= 0:
        print("== phase 1: maximum rate (unpaced)")
        runs1, summary1 = run_all(
            [Kind("trio_rt", TRIO), Kind("baseline", BASE)], messages=args.messages, **common
        )
        max_rates = {
            label: k["deliveries_per_s"] / args.clients for label, k in summary1["per_kind"].items()
        }
        rate = 0.5 * min(max_rates.values())
        print(
            "max broadcasts/s: "
            + ", ".join(f"{label} {r:,.0f}" for label, r in max_rates.items())
            + f" -> paced at {rate:,.0f} broadcasts/s"
        )
        payload["phase1"] = {"summary": summary1, "runs": runs1, "max_broadcasts_per_s": max_rates}
    messages = max(1, round(rate * args.paced_seconds))
    print(f"== phase 2: paced at {rate:,.1f} broadcasts/s, {messages} broadcasts")
    lg = ("--rate", f"{rate:.3f}")
    runs2, summary2 = run_all(
        [Kind("trio_rt", TRIO, (), lg), Kind("baseline", BASE, (), lg)],
        messages=messages,
        **common,
    )
    k = summary2["per_kind"]
    print(
        f"RATIO p99 baseline/trio_rt at {rate:,.0f} broadcasts/s:"
        f" {k['baseline']['latency_p99_us'] / k['trio_rt']['latency_p99_us']:.2f}"
        f"  (p50: {k['baseline']['latency_p50_us'] / k['trio_rt']['latency_p50_us']:.2f};"
        " > 1 means trio_rt's latency is lower)"
    )
    payload["phase2"] = {"summary": summary2, "runs": runs2, "rate": rate, "messages": messages}
    params = {k: v for k, v in vars(args).items() if k != "json"}
    write_json("latency_half_rate", params, payload, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

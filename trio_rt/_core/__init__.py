"""Ring 1, sans-IO: the rules with no I/O (no trio, websockets, Redis, Cassandra).

Nothing public here: the public names are re-exported by `trio_rt` (docs/architecture.md).
"""

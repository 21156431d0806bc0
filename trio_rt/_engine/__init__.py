"""Ring 2, the Trio engine: the manager, its parts and the seams.

Nothing public here: the public names are re-exported by `trio_rt` (docs/architecture.md).
"""

"""Ring 3, the socket edge: websockets glue, direct socket writes, frame assembly.

Nothing public here (docs/architecture.md).
"""

"""Start and stop real Redis and Cassandra servers (moved here from ``services.py``)."""

from ._cassandra import *  # noqa: F403
from ._cassandra import __all__, parse_redis_url, redis_command  # noqa: F401

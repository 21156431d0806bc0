"""Start and stop real Redis and Cassandra servers for development, tests and CI.

Nothing here is a mock: Redis is Debian's ``redis-server`` binary, Cassandra is the
``org.apache.cassandra:cassandra-all`` server jar from Maven Central, run directly as
``java ... org.apache.cassandra.service.CassandraDaemon`` on Java 17.

Python API (stdlib only; no trio needed)::

    with RedisServer.start() as redis:          # redis.url == "redis://127.0.0.1:PORT/0"
        ...
    with CassandraServer.start() as cass:       # cass.host, cass.port (CQL native port)
        ...
    with RedisCluster.start() as cluster:       # cluster.addresses == ["127.0.0.1:P1", ...]
        ...

Command line::

    python -m trio_rt.testing.services up [--redis] [--cassandra] [--redis-cluster]
    python -m trio_rt.testing.services status
    python -m trio_rt.testing.services down

``up`` starts detached servers, records them in ``<state dir>/services.json`` and prints
``export TRIO_RT_...=...`` lines (so ``eval "$(python -m trio_rt.testing.services up)"``
works); ``down`` stops what the state file lists.

Environment variables:

* ``TRIO_RT_SERVICES_DIR``: state dir (default ``<repo>/.services`` for a source checkout,
  else ``./.services``).  Every server gets its own sub-directory there (data + logs).
* ``TRIO_RT_CACHE_DIR``: download cache (default ``$XDG_CACHE_HOME/trio_rt`` or
  ``~/.cache/trio_rt``); the Cassandra jars go to ``cassandra-<version>/lib``.
* ``TRIO_RT_CASSANDRA_VERSION``: Cassandra 5.0.x version (default :data:`CASSANDRA_VERSION`).
* ``TRIO_RT_CASSANDRA_HEAP`` / ``TRIO_RT_CASSANDRA_HEAP_MIN``: ``-Xmx`` / ``-Xms`` of the
  Cassandra JVM (defaults :data:`CASSANDRA_HEAP`, :data:`CASSANDRA_HEAP_MIN`).
* ``TRIO_RT_JAVA_HOME``: the Java 17 home to use; when set, nothing else is tried and
  anything but a Java 17 there is an error.  Else ``JAVA_HOME`` if it is Java 17, else
  ``/usr/lib/jvm/java-17-openjdk-*``, else ``java`` on ``PATH`` if it is Java 17.
* ``TRIO_RT_KEEP_SERVICE_DIRS=1``: keep data/log dirs after a clean stop.
* ``TRIO_RT_NO_APT=1``: never run ``apt-get`` to install missing ``redis-server``,
  ``maven`` or ``openjdk-17-jre-headless`` (by default this happens when running as root).

Modules (all private; import from this package):

* ``_base``: what every service shares: :class:`ServiceError`, the :class:`Service` base
  class, process spawning and stopping, free ports, readiness waits, the state file;
* ``_install``: ``apt-get`` installs and :func:`find_java17`;
* ``_redis``: :class:`RedisServer` and a tiny RESP client (:func:`redis_command`);
* ``_redis_cluster``: :class:`RedisCluster`;
* ``_cassandra``: :class:`CassandraServer`, its jars (Maven), JVM flags and a CQL probe;
* ``_cli``: :func:`main`, the command line (``__main__`` runs it).
"""

from ._base import (
    HOST,
    STATE_FILE,
    STOP_TIMEOUT,
    Service,
    ServiceError,
    default_cache_dir,
    default_state_dir,
)
from ._cassandra import (
    CASSANDRA_HEAP,
    CASSANDRA_HEAP_MIN,
    CASSANDRA_MAIN,
    CASSANDRA_START_TIMEOUT,
    CassandraEndpoint,
    CassandraServer,
    cassandra_jvm_args,
    cassandra_release_version,
    ensure_cassandra_jars,
    parse_cassandra_endpoint,
)
from ._cli import main
from ._install import find_java17
from ._jvm import CASSANDRA_VERSION
from ._redis import (
    REDIS_START_TIMEOUT,
    RedisReplyError,
    RedisServer,
    RespValue,
    parse_redis_url,
    redis_command,
    redis_ping,
)
from ._redis_cluster import RedisCluster

#: What the state file may hold (the CLI's view of a service); kept for older importers.
ServiceRecord = RedisServer | RedisCluster | CassandraServer

__all__ = [
    "CASSANDRA_HEAP",
    "CASSANDRA_HEAP_MIN",
    "CASSANDRA_MAIN",
    "CASSANDRA_START_TIMEOUT",
    "CASSANDRA_VERSION",
    "HOST",
    "REDIS_START_TIMEOUT",
    "STATE_FILE",
    "STOP_TIMEOUT",
    "CassandraEndpoint",
    "CassandraServer",
    "RedisCluster",
    "RedisReplyError",
    "RedisServer",
    "RespValue",
    "Service",
    "ServiceError",
    "ServiceRecord",
    "cassandra_jvm_args",
    "cassandra_release_version",
    "default_cache_dir",
    "default_state_dir",
    "ensure_cassandra_jars",
    "find_java17",
    "main",
    "parse_cassandra_endpoint",
    "parse_redis_url",
    "redis_command",
    "redis_ping",
]

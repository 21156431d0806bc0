"""The Cassandra version and JVM flags that both the test node's launcher (`_cassandra`) and
the CDC agent's (`trio_rt.cdc`) use: a module of their own, so that neither imports the other
at module level (the node's launcher starts the agent)."""

from __future__ import annotations

__all__ = ["CASSANDRA_VERSION"]

#: Newest 5.0.x that Maven Central served when this was written (checked 2026-11).
CASSANDRA_VERSION = "5.0.9"

# Module flags from Cassandra 5.0's conf/jvm17-server.options (+ two that embedders add).
_JAVA17_EXPORTS = [
    "java.base/jdk.internal.misc",
    "java.management.rmi/com.sun.jmx.remote.internal.rmi",
    "java.management/com.sun.jmx.remote.security",
    "java.rmi/sun.rmi.registry",
    "java.rmi/sun.rmi.server",
    "java.sql/java.sql",
    "java.base/java.lang.ref",
    "jdk.unsupported/sun.misc",
    "jdk.compiler/com.sun.tools.javac.file",
    "jdk.attach/sun.tools.attach",
]
_JAVA17_OPENS = [
    "java.base/java.lang.module",
    "java.base/jdk.internal.loader",
    "java.base/jdk.internal.ref",
    "java.base/jdk.internal.reflect",
    "java.base/jdk.internal.math",
    "java.base/jdk.internal.module",
    "java.base/jdk.internal.util.jar",
    "jdk.management/com.sun.management.internal",
    "java.base/sun.nio.ch",
    "java.base/java.io",
    "java.base/java.nio",
    "java.base/java.lang.reflect",
    "jdk.compiler/com.sun.tools.javac",
    "java.base/java.lang",
    "java.base/java.util",
]

"""Test support for trio_rt: launchers for real Redis and Cassandra servers.

See :mod:`trio_rt.testing.services` (Python API and ``python -m trio_rt.testing.services``
command line) and :mod:`trio_rt.testing.pytest_plugin` (pytest fixtures).
"""

"""Servers driven by the benchmark harness; each prints ``READY <port>`` once listening."""

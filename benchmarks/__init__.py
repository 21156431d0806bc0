"""Benchmarks for trio_rt (not part of the installed package)."""

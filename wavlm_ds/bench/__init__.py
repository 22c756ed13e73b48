"""Benchmarks behind tools/bench_*.py: ops, data path, engine overhead, resume bytes.

Each module measures and returns plain dicts (the tools write them as JSON beside the
printed table); `timing` holds the interleaved timers they share.
"""

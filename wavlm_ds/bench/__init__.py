"""Benchmarks behind tools/bench_*.py (ops, data path, engine overhead, resume bytes,
throughput) and the GPU check behind tools/gpu_check.sh; the tools parse arguments and call
in here.

Each benchmark returns plain dicts (the tools write them as JSON beside the printed table);
`timing` holds the interleaved timers they share. `throughput` times the real trainer step
(imports DeepSpeed); `gpu_check`, `stages` and `wheelhouse` drive the one-command GPU
measurement and use the standard library only, since they run before the GPU machine has
the wheels it lacks.
"""

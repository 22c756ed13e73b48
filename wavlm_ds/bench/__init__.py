"""Benchmarks and the GPU check: the logic behind tools/bench_throughput.py and
tools/gpu_check.sh (the tools parse arguments and call in here).

`throughput` times the real trainer step (imports DeepSpeed); `gpu_check`, `stages` and
`wheelhouse` drive the one-command GPU measurement and use the standard library only, since
they run before the GPU machine has the wheels it lacks.
"""

"""Timers shared by the benchmarks: interleaved variants, one at a time, CUDA events."""
from __future__ import annotations

import resource
import statistics
import time
from typing import Callable

import torch


def interleaved(fns: dict[str, Callable], repeats: int, warmup: int = 3
                ) -> dict[str, list[float]]:
    """Every variant once per round, the order flipped every round, so that machine noise
    hits all alike; warm-up rounds are dropped. Seconds per call, per variant."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for i in range(warmup + repeats):
        for name in (names if i % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            fns[name]()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def one_at_a_time(fns: dict[str, Callable], repeats: int, warmup: int = 3
                  ) -> dict[str, dict[str, float]]:
    """Each variant alone, `repeats` calls after `warmup`: median seconds and median minor
    page faults per call (ru_minflt). Interleaving evicts caches and makes the allocator
    hand out fresh pages; this is the other end, what a variant costs in a steady loop."""
    out = {}
    for name, fn in fns.items():
        secs, faults = [], []
        for i in range(warmup + repeats):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                secs.append(time.perf_counter() - t0)
                faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        out[name] = {"median_s": statistics.median(secs), "page_faults": statistics.median(faults)}
    return out


def timeit(fns: dict[str, Callable], repeats: int, warmup: int = 3) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in interleaved(fns, repeats, warmup).items()}


def cuda_time(fn: Callable, repeats: int, warmup: int = 3) -> float:
    """Median seconds of fn() on the GPU (CUDA events, synchronized per call)."""
    times = []
    for i in range(warmup + repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)

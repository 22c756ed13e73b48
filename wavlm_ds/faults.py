"""Fault injection: the named points production code calls, driven by environment variables.

Only the tests set these variables (tests/reliability, tests/integration); unset, every
hook is a no-op. One module, so a reader sees every way a run can be made to fail on purpose:
- WAVLM_DS_FAULT: kill or pause a rank at a named phase (`fault_point`);
- WAVLM_DS_INJECT_NAN: poison one rank's loss at one step (`injected_poison`);
- WAVLM_DS_INJECT_BF16_ERROR: make one encoder module wrong in bf16/fp16 only, as a wrong
  low-precision kernel would be (`wrong_in_low_precision`, for the start-up numerics check).
"""
from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn

FAULT_ENV = "WAVLM_DS_FAULT"  # see fault_point
FAULT_DIR_ENV = "WAVLM_DS_FAULT_DIR"
NAN_ENV = "WAVLM_DS_INJECT_NAN"  # see injected_poison
BF16_ERROR_ENV = "WAVLM_DS_INJECT_BF16_ERROR"  # see wrong_in_low_precision

_phase_counts: Counter = Counter()


def fault_point(phase: str, rank: int) -> None:
    """Fault-injection hook for the reliability tests (tests/reliability).

    WAVLM_DS_FAULT is a comma-separated list of `phase[@rank][:action]`. Phases: the save
    phases (after_first_file, after_all_shards, before_manifest, after_manifest,
    before_latest, after_latest), `step<N>` (start of optimizer step N) and `eval` (start of
    a validation pass); `phase#K` fires the K-th time this process reaches it. Actions:
    `kill` (default: SIGKILL this process) or `pause<S>` (touch `<phase>.<rank>.paused` in
    $WAVLM_DS_FAULT_DIR, then sleep S seconds, so that a test can send a signal there).
    """
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return
    _phase_counts[phase] += 1
    for item in filter(None, spec.split(",")):
        where, _, action = item.partition(":")
        name, _, only_rank = where.partition("@")
        name, _, nth = name.partition("#")
        if name != phase or (only_rank and int(only_rank) != rank):
            continue
        if nth and int(nth) != _phase_counts[phase]:
            continue
        if action.startswith("pause"):
            marker = Path(os.environ.get(FAULT_DIR_ENV, ".")) / f"{phase}.{rank}.paused"
            marker.touch()
            time.sleep(float(action[len("pause"):] or 5))
        else:
            os.kill(os.getpid(), signal.SIGKILL)


def injected_poison(step: int, rank: int) -> float | None:
    """Fault injection for the numerics tests: the factor (nan or inf) to multiply this
    rank's loss by at this step, or None. Spec: "<step>@<rank>[:inf],..." (default nan)."""
    for item in filter(None, os.environ.get(NAN_ENV, "").split(",")):
        where, _, kind = item.partition(":")
        if where == f"{step}@{rank}":
            return float(kind or "nan")
    return None


class WrongInLowPrecision(nn.Module):
    """Wraps a module; in bf16 or fp16 its output gets a deterministic error of relative size
    `error` (what a wrong kernel does), in fp32 it is exact. Parameters keep their names
    under `inner.`; the forward's signature and attributes are the wrapped module's."""

    def __init__(self, inner: nn.Module, error: float = 0.5) -> None:
        super().__init__()
        self.inner, self.error = inner, error

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:  # e.g. the encoder reads frontend.proj_in.weight.dtype
            return getattr(super().__getattr__("inner"), name)

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        if out.dtype == torch.float32:
            return out
        wrong = torch.roll(out, shifts=1, dims=-1)  # same scale, wrong values
        return out + self.error * wrong


def wrong_in_low_precision(encoder: nn.Module) -> None:
    """WAVLM_DS_INJECT_BF16_ERROR=<module name> (e.g. pos_conv, blocks.1): replace that
    submodule of `encoder` by a WrongInLowPrecision wrapper of it."""
    name = os.environ.get(BF16_ERROR_ENV, "")
    if not name:
        return
    parent_name, _, child = name.rpartition(".")
    parent = encoder.get_submodule(parent_name) if parent_name else encoder
    setattr(parent, child, WrongInLowPrecision(getattr(parent, child)))

"""Which precision a CPU run uses: bf16 only where it is native, right and faster.

`auto` on CPU decides in three steps, for the model being run:
1. Native? Without AVX512-BF16 or AMX, torch emulates bf16 matmuls: on an AMD EPYC with AVX2
   only, a 512 x 512 bf16 matmul ran at 0.9 GFLOP/s against 80 GFLOP/s in fp32, and the demo
   took 2.8 s/step instead of ~0.5; on an Intel Xeon with AVX512 but no AVX512-BF16, oneDNN
   emulates bf16 at 23-26 GFLOP/s against 71-77 in fp32 (512 x 512), and the 2-rank demo
   took 1.59 s/step in bf16 against 1.06 in fp32 (2026-12-07, BENCHMARKS.md).
   `torch.backends.cpu.get_cpu_capability()` cannot tell (it says AVX2 or AVX512 either
   way), so we ask `torch.cpu._is_avx512_bf16_supported()` and
   `torch.cpu._is_amx_tile_supported()`. Not native: fp32.
2. Right? The start-up numerics check (wavlm_ds/numerics.py) on the run's encoder and
   micro-batch shape; a module outside its band: fp32, the module named in the reason.
3. Faster? One forward + backward of the run's encoder at its micro-batch shape in bf16 and
   in fp32, interleaved, median of 3: bf16 only if it is faster. Native is not enough: at
   model_dim 96 on an Intel Xeon with AMX the demo ran 0.91 s/step in bf16 and 0.64 in fp32.
Steps 2 and 3 took 5.0-6.6 s at the demo's size (BENCHMARKS.md, "Which precision `auto`
picks"). Without a run config (`cfg=None`) only step 1 applies. A resumed run keeps the
precision it started in (`resumed_precision`). Either way the same DeepSpeed engine (ZeRO-2,
FusedAdam, accumulation) runs: only the `bf16` section of its JSON changes. CUDA runs keep
their JSON as written (bf16, the recipe's dtype), and train.py's numerics check covers them.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from wavlm_ds import numerics
from wavlm_ds.config import RunConfig

CHOICES = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class CpuPrecision:
    dtype: str  # "bf16" or "fp32"
    reason: str  # one line for the console and the run summary


def cpu_bf16_support() -> tuple[bool, str]:
    """(native, description): does this CPU compute bf16 matmuls in hardware?"""
    capability = torch.backends.cpu.get_cpu_capability()
    if torch.cpu._is_amx_tile_supported():
        return True, f"AMX tiles (capability {capability})"
    if torch.cpu._is_avx512_bf16_supported():
        return True, f"AVX512-BF16 (capability {capability})"
    return False, f"no AVX512-BF16 and no AMX (capability {capability}): bf16 would be emulated"


def choose_cpu_precision(choice: str = "auto", cfg: RunConfig | None = None,
                         micro: int = 1) -> CpuPrecision:
    """'auto': bf16 where native, right and faster for `cfg`'s encoder at `micro` x
    data.max_duration_s (the module docstring), else fp32; 'bf16' or 'fp32' as asked."""
    if choice not in CHOICES:
        raise ValueError(f"precision={choice!r}: use one of {', '.join(CHOICES)}")
    native, what = cpu_bf16_support()
    if choice != "auto":
        return CpuPrecision(choice, f"{choice} as asked; this CPU has {what}")
    if not native or cfg is None:
        return CpuPrecision("bf16" if native else "fp32", f"auto: this CPU has {what}")
    return _measured_choice(cfg, micro, what)


def _measured_choice(cfg: RunConfig, micro: int, what: str) -> CpuPrecision:
    cpu = torch.device("cpu")
    frames = numerics.max_frames(cfg)
    report = numerics.check_run(cfg.model, micro, frames, torch.bfloat16, cpu,
                                cfg.masking.mask_ratio, cfg.masking.mask_span_frames)
    if report.failures():
        bad = ", ".join(f"{r.module} {r.forward_rel:.3g}" for r in report.failures())
        return CpuPrecision("fp32", f"auto: this CPU has {what}, but its bf16 fails the "
                                    f"numerics check ({bad} relative error against fp32)")
    t = numerics.time_forward_backward(cfg.model, micro, frames,
                                       (torch.bfloat16, torch.float32), cpu)
    ratio = t["float32"] / t["bfloat16"]
    timing = (f"forward + backward at micro-batch {micro} x {frames} frames: bf16 "
              f"{t['bfloat16'] * 1e3:.0f} ms, fp32 {t['float32'] * 1e3:.0f} ms")
    if ratio > 1.0:
        return CpuPrecision("bf16", f"auto: this CPU has {what}; bf16 passes the numerics "
                                    f"check and is {ratio:.2f}x as fast ({timing})")
    return CpuPrecision("fp32", f"auto: this CPU has {what}, but bf16 is not faster for this "
                                f"model ({ratio:.2f}x; {timing})")


def resumed_precision(choice: str, trained_ds_config: Path) -> CpuPrecision:
    """The precision for resuming a run: the one it trained in, read from the DeepSpeed JSON
    train.py wrote into its run directory at its start. `auto` does not decide again: its
    timing can come out the other way under another load (1.11-1.87x across sizes and runs,
    BENCHMARKS.md), and a run that changes dtype midway is neither the run it was nor
    bitwise resumable. Asking for the other precision is an error that says what to do."""
    ds = json.loads(trained_ds_config.read_text())
    dtype = "bf16" if numerics.run_dtype(ds) is not None else "fp32"
    if choice not in ("auto", dtype):
        raise ValueError(f"--precision {choice}: {trained_ds_config.parent} trained in {dtype} "
                         f"and is resumed in it; use --precision {dtype} (or auto) to resume, "
                         f"or another --run-dir for a new run in {choice}")
    return CpuPrecision(dtype, f"{dtype}, kept from the run being resumed "
                               f"({trained_ds_config}); auto does not decide again mid-run")


def apply_precision(ds_config: dict, precision: CpuPrecision) -> dict:
    """A copy of a DeepSpeed JSON with bf16 switched on or off for `precision`."""
    ds = copy.deepcopy(ds_config)
    ds.setdefault("bf16", {})["enabled"] = precision.dtype == "bf16"
    if precision.dtype == "fp32":
        ds.get("data_types", {}).pop("grad_accum_dtype", None)  # fp32 already
        if not ds.get("data_types", True):
            ds.pop("data_types")
    return ds

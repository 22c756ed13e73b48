"""Which precision a CPU run uses: bf16 only where the CPU computes bf16 natively.

On a CPU without AVX512-BF16 or AMX, torch emulates bf16 matmuls: on an AMD EPYC with AVX2
only, a 512 x 512 bf16 matmul ran at 0.9 GFLOP/s against 80 GFLOP/s in fp32, and the demo
took 2.8 s/step instead of ~0.5. `torch.backends.cpu.get_cpu_capability()` cannot tell (it
says AVX2 or AVX512 either way), so we ask `torch.cpu._is_avx512_bf16_supported()` and
`torch.cpu._is_amx_tile_supported()`. Without either, the same DeepSpeed engine (ZeRO-2,
FusedAdam, accumulation) runs in fp32: only the `bf16` section of its JSON changes.
CUDA runs keep their JSON as written.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

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


def choose_cpu_precision(choice: str = "auto") -> CpuPrecision:
    """'auto': bf16 where native, else fp32; 'bf16' or 'fp32' as asked (said so)."""
    if choice not in CHOICES:
        raise ValueError(f"precision={choice!r}: use one of {', '.join(CHOICES)}")
    native, what = cpu_bf16_support()
    if choice != "auto":
        return CpuPrecision(choice, f"{choice} as asked; this CPU has {what}")
    return CpuPrecision("bf16" if native else "fp32", f"auto: this CPU has {what}")


def apply_precision(ds_config: dict, precision: CpuPrecision) -> dict:
    """A copy of a DeepSpeed JSON with bf16 switched on or off for `precision`."""
    ds = copy.deepcopy(ds_config)
    ds.setdefault("bf16", {})["enabled"] = precision.dtype == "bf16"
    if precision.dtype == "fp32":
        ds.get("data_types", {}).pop("grad_accum_dtype", None)  # fp32 already
        if not ds.get("data_types", True):
            ds.pop("data_types")
    return ds

"""Training metrics: device peak table, MFU, and the rank-0 writer (monitor + JSONL + bar).

Model FLOPs are the analytic count of `wavlm_ds.model.flops` (training = 3 x forward, no
activation recompute counted), so MFU is comparable across activation-checkpointing
settings. On CPU there is no meaningful peak: MFU is reported as None and the log says so.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

# Dense bf16 peak TFLOP/s per device (vendor datasheets, no sparsity).
PEAK_TFLOPS: dict[str, float] = {
    "A100": 312.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "H200": 989.0,
    "B200": 2250.0,
    "L40S": 362.0,
    "A10": 125.0,
    "V100": 125.0,  # fp16 tensor cores; V100 has no bf16
}


def device_peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    """Peak dense bf16 TFLOP/s of `device`, or None where it is unknown (e.g. CPU)."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    # Longest key first, so "H100 PCIe" wins over "H100".
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in name.lower():
            return PEAK_TFLOPS[key]
    return None


def mfu(achieved_tflops_per_device: float, peak: float | None) -> float | None:
    return None if peak is None else achieved_tflops_per_device / peak


class MetricsWriter:
    """Rank-0 sink: DeepSpeed's monitor (TensorBoard/CSV), a JSONL file and a tqdm bar."""

    def __init__(self, run_dir: Path, monitor: Any, enabled: bool, total_steps: int,
                 start_step: int, progress_bar: bool) -> None:
        self.enabled = enabled
        self.monitor = monitor
        self.jsonl = None
        self.bar = None
        if not enabled:
            return
        self.jsonl = open(Path(run_dir) / "metrics.jsonl", "a", buffering=1)
        if progress_bar:
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def write(self, step: int, values: dict[str, float | None], prefix: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: v for k, v in values.items() if v is not None and math.isfinite(v)}
        self.jsonl.write(json.dumps({"step": step, "split": prefix, **values}) + "\n")
        if self.monitor is not None and getattr(self.monitor, "enabled", False):
            self.monitor.write_events([(f"{prefix}/{k}", v, step) for k, v in clean.items()])
        if self.bar is not None and prefix == "train":
            self.bar.n = step
            self.bar.set_postfix({k: f"{clean[k]:.4g}" for k in ("loss", "lr") if k in clean})

    def write_info(self, step: int, kind: str, values: dict) -> None:
        """A one-off record (e.g. which implementations run) into the JSONL, once."""
        if self.enabled:
            self.jsonl.write(json.dumps({"step": step, "split": kind, **values}) + "\n")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.jsonl is not None:
            self.jsonl.close()

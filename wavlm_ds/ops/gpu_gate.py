"""Which CUDA fast paths may run: only after `tools/gpu_selftest.py` passed on this GPU.

No GPU was available to this project, so the Triton and FlexAttention paths are opt-in
until proven on the user's hardware. The self-test writes a record keyed by GPU name,
torch and triton versions; a path is enabled when its op passed there, or when forced
(`force=True` from config, or WAVLM_DS_FORCE_FAST_PATHS=1).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

FORCE_ENV = "WAVLM_DS_FORCE_FAST_PATHS"
RECORD_ENV = "WAVLM_DS_SELFTEST_RECORD"


def record_path() -> Path:
    default = Path.home() / ".cache" / "wavlm_ds" / "gpu_selftest.json"
    return Path(os.environ.get(RECORD_ENV, default))


def device_key(device: torch.device) -> str:
    """Identify the GPU model and software stack a self-test result is valid for."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"{name}|torch={torch.__version__}|triton={triton_version}"


def passed_ops(device: torch.device) -> set[str]:
    path = record_path()
    if not path.exists():
        return set()
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return set()
    entry = record.get(device_key(device), {})
    return {op for op, ok in entry.get("ops", {}).items() if ok}


def cuda_fast_path_enabled(op: str, device: torch.device, force: bool | None = None) -> bool:
    """True if the CUDA fast path of `op` ('logmel', 'attention') may run on `device`."""
    if device.type != "cuda":
        return False
    if force is not None:
        return force
    if os.environ.get(FORCE_ENV) == "1":
        return True
    return op in passed_ops(device)


def write_result(device: torch.device, results: dict[str, bool]) -> Path:
    """Store the self-test outcome for this device key (merging with other devices)."""
    path = record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {}
    if path.exists():
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError:
            record = {}
    record[device_key(device)] = {"ops": results}
    path.write_text(json.dumps(record, indent=2))
    return path

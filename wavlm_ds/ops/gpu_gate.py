"""Which proven CUDA fast paths may run: FlexAttention and the Triton log-Mel kernel.

torch's own fused kernels need no proof: on CUDA, attention defaults to
`scaled_dot_product_attention` (the `sdpa` path) and log-Mel to the torch.stft path. The two
fast paths this project wrote itself run only where `tools/gpu_selftest.py` proved them exact
*and* faster on that GPU model, or when forced:

    model.fast_paths: auto   use a path where the self-test record says it passed (default)
                      force  use flex + Triton on CUDA without a record (CPU-only: an error)
                      off    never (sdpa + torch.stft on CUDA)

The record is one JSON file keyed by GPU model, torch and triton versions. It lives inside
the venv (`<sys.prefix>/share/wavlm_ds/gpu_selftest.json`), which the README puts on the
shared filesystem, so every node of a job reads the same verdict; `model.selftest_record`
(or $WAVLM_DS_SELFTEST_RECORD, for tools) names another path. It is read once per process
(`READS` counts the reads, for the tests); a record for another GPU model or software
version is ignored and the log says so.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import torch

from wavlm_ds.jsonio import write_json_atomic

RECORD_ENV = "WAVLM_DS_SELFTEST_RECORD"
OPS = ("attention_flex", "logmel_triton")
log = logging.getLogger(__name__)

_settings = {"mode": "auto", "record": ""}
_cache: dict[tuple[str, str], set[str]] = {}
READS = {"count": 0}


def configure(mode: str = "auto", record: str = "") -> None:
    """Set the process-wide policy (train.py calls this once from model.fast_paths)."""
    if mode not in ("auto", "force", "off"):
        raise ValueError(f"model.fast_paths={mode!r}: use auto, force or off")
    _settings.update(mode=mode, record=record)


def record_path() -> Path:
    """model.selftest_record, else $WAVLM_DS_SELFTEST_RECORD, else inside the venv."""
    default = Path(sys.prefix) / "share" / "wavlm_ds" / "gpu_selftest.json"
    return Path(_settings["record"] or os.environ.get(RECORD_ENV, "") or default)


def device_key(device: torch.device) -> str:
    """Identify the GPU model and software stack a self-test result is valid for."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"{name}|torch={torch.__version__}|triton={triton_version}"


def _read(path: Path) -> dict:
    READS["count"] += 1
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as err:
        log.warning("GPU self-test record %s is unreadable (%s): ignored; rerun "
                    "tools/gpu_selftest.py", path, err)
        return {}


def passed_ops(device: torch.device) -> set[str]:
    """The ops the record says passed for this device's key (read once per process)."""
    path, key = record_path(), device_key(device)
    if (str(path), key) not in _cache:
        record = _read(path)
        entry = record.get(key)
        if entry is None and record:
            log.info("GPU self-test record %s has entries for %s, none for %s: ignored "
                     "(run tools/gpu_selftest.py on this GPU)", path, sorted(record), key)
        _cache[(str(path), key)] = {op for op, ok in (entry or {}).get("ops", {}).items() if ok}
    return _cache[(str(path), key)]


def cuda_fast_path_enabled(op: str, device: torch.device) -> bool:
    """True if the fast path `op` (one of OPS) may run on `device` under the policy."""
    if op not in OPS:
        raise ValueError(f"unknown fast path {op!r}; one of {OPS}")
    if device.type != "cuda" or _settings["mode"] == "off":
        return False
    if _settings["mode"] == "force":
        return True
    return op in passed_ops(device)


def write_result(device: torch.device, results: dict[str, bool]) -> Path:
    """Store the self-test verdicts `results` (op -> passed) for this device key, merged into
    the record: other devices' entries and this device's other ops are kept, so the
    self-test can record each op as soon as it is decided."""
    path = record_path()
    record = _read(path) if path.exists() else {}
    entry = record.setdefault(device_key(device), {"ops": {}})
    entry.setdefault("ops", {}).update(results)
    write_json_atomic(path, record)
    _cache.clear()
    return path

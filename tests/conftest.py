"""Test-session set-up shared by unit and integration tests."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# DeepSpeed's JIT ops are prebuilt here by `make ops`; never compile into ~/.cache.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".venv" / "torch_extensions"))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_sessionstart(session) -> None:
    from wavlm_ds import shm
    shm.sweep()  # buffers of runs killed earlier (DeepSpeed never unlinks them)


def pytest_sessionfinish(session, exitstatus) -> None:
    from wavlm_ds import shm
    shm.sweep(min_age_s=5.0)  # SIGKILLed ranks of the fault tests leave theirs behind

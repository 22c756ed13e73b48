"""Fault-injection suite (issue 9). CI runs a reduced count of cases; set
WAVLM_DS_RELIABILITY_FULL=1 (`make reliability-full`) for the full count.

Every test records what it tried into a table (see `record`); with
WAVLM_DS_RELIABILITY_REPORT=<path> the table is written there as JSON lines at the end of
the session (`make reliability-full` writes runs/reliability/report.jsonl, which
RELIABILITY.md quotes).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration.conftest import COMMON, corpus_overrides, ds_config, metrics, write_shards
from wavlm_ds.launch import ROOT, run_training, train_command

FULL = os.environ.get("WAVLM_DS_RELIABILITY_FULL") == "1"
REPORT_ENV = "WAVLM_DS_RELIABILITY_REPORT"
STEPS = 12  # two epochs of the balanced corpus: 96 samples / (2 ranks x 2 micro x 4 accum)
_records: list[dict] = []

__all__ = ["COMMON", "FULL", "STEPS", "ds_config", "metrics", "launch", "losses", "step_keys"]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """8 shards x 12 samples: 4 (rank, worker) slots of exactly 24 samples, so one epoch
    (6 optimizer steps) consumes every sample exactly once."""
    root = tmp_path_factory.mktemp("rcorpus")
    return {"train": write_shards(root / "train", "train", num_shards=8, per_shard=12, seed=11),
            "valid": write_shards(root / "valid", "valid", num_shards=2, per_shard=8, seed=12),
            "noise": write_shards(root / "noise", "noise", num_shards=2, per_shard=4, seed=13,
                                  noise=True)}


def launch(run_dir: Path, corpus: dict[str, Path], overrides: list[str], *, seed: int = 1234,
           env: dict[str, str] | None = None, resume: str = "auto", ds: dict | None = None,
           launcher_args: list[str] = (), hostfile: Path | None = None) -> int:
    """train.py through the deepspeed launcher with key logging on; returns its exit code."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ds_path = run_dir / f"ds_{len(list(run_dir.glob('launch_*.log')))}.json"
    ds_path.write_text(json.dumps(ds or ds_config(precision="fp32")))
    items = corpus_overrides(corpus) + COMMON + [f"training.seed={seed}",
                                                 "logging.log_sample_keys=true"] + overrides
    kwargs = {"hostfile": hostfile} if hostfile else {}
    cmd = train_command(ROOT / "configs" / "demo.yaml", ds_path, run_dir, items, resume,
                        launcher_args=list(launcher_args), **kwargs)
    log = run_dir / f"launch_{ds_path.stem}.log"
    return run_training(cmd, log, env={"WAVLM_DS_FAULT_DIR": str(run_dir), **(env or {})},
                        timeout_s=900)


def losses(run_dir: Path) -> dict[int, float]:
    """Step -> training loss; a step logged again after a resume replaces the first log."""
    return {r["step"]: r["loss"] for r in metrics(run_dir)}


def step_keys(run_dir: Path) -> dict[tuple[int, int], list[str]]:
    """(rank, step) -> sample keys consumed; re-done steps after a resume replace the first."""
    out = {}
    for path in sorted((run_dir / "sample_keys").glob("rank*.jsonl")):
        rank = int(path.stem[4:])
        for line in path.read_text().splitlines():
            row = json.loads(line)
            out[(rank, row["step"])] = row["keys"]
    return out


@pytest.fixture(scope="session")
def reference(corpus, tmp_path_factory) -> Path:
    """The uninterrupted run every fault is compared with (seed 1234, saves every 3)."""
    run = tmp_path_factory.mktemp("rreference")
    code = launch(run, corpus, [f"training.max_steps={STEPS}", "training.save_every_steps=3"])
    assert code == 0, (run / "launch_ds_0.log").read_text()[-3000:]
    return run


@pytest.fixture(scope="session")
def record():
    """record(fault=..., cases=..., survived=..., lost=..., command=...) adds a table row."""
    def add(**row) -> None:
        _records.append(row)
    return add


def pytest_sessionfinish(session, exitstatus) -> None:
    path = os.environ.get(REPORT_ENV)
    if path and _records:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            for row in _records:
                f.write(json.dumps({**row, "full": FULL}) + "\n")

"""Non-finite losses on one rank (issue 9, item 5), a wrong bf16 kernel (issue 23) and
untrusted files / secrets (item 8)."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.integration.conftest import optimizer_state_files
from tests.integration.test_trainer import assert_tensors_equal
from tests.reliability.conftest import FULL, ds_config, launch, metrics
from wavlm_ds.checkpoint import MANIFEST, CheckpointError, safe_load
from wavlm_ds.data.index import sha256_file
from wavlm_ds.data.pipeline import Sample, crop_labels
from wavlm_ds.faults import BF16_ERROR_ENV
from wavlm_ds.launch import ROOT, launcher_env

pytestmark = pytest.mark.slow
PWNED = Path("/tmp/wavlm_ds_reliability_pwned")
SECRET = "wandb-secret-4f1c9a7e"


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {PWNED}",))


def _cases() -> list[list[tuple[int, int, str]]]:
    """Poisoned (step, rank, kind) sets: fixed in CI, plus seeded random ones in full mode."""
    cases = [[(3, 1, "nan"), (5, 0, "inf")]]
    rng = np.random.default_rng(5)
    for _ in range(4 if FULL else 0):
        steps = sorted(rng.choice(np.arange(2, 7), size=2, replace=False).tolist())
        cases.append([(s, int(rng.integers(2)), str(rng.choice(["nan", "inf"]))) for s in steps])
    return cases


@pytest.mark.parametrize("case", _cases(), ids=str)
def test_nonfinite_steps_are_skipped_everywhere(case, corpus, tmp_path, record):
    spec = ",".join(f"{s}@{r}:{k}" for s, r, k in case)
    code = launch(tmp_path, corpus, ["training.max_steps=6", "training.save_every_steps=1",
                                     "training.keep_last_checkpoints=10"],
                  env={"WAVLM_DS_INJECT_NAN": spec, "WANDB_API_KEY": SECRET})
    assert code == 0
    rows = {r["step"]: r for r in metrics(tmp_path)}
    poisoned = {s for s, _, _ in case}
    assert [rows[s]["skipped_steps"] for s in range(1, 7)] == \
        [sum(p <= s for p in poisoned) for s in range(1, 7)]
    root = tmp_path / "checkpoints"
    for step in poisoned:  # parameters and optimizer state bitwise unchanged by the step
        before, after = root / f"step{step - 1:08d}", root / f"step{step:08d}"
        optimizer = optimizer_state_files(before)
        assert len(optimizer) == 2  # one ZeRO partition per rank
        for name in ["mp_rank_00_model_states.pt"] + optimizer:
            assert_tensors_equal(safe_load(before / name), safe_load(after / name),
                                 ignore={"global_steps", "skipped_steps", "global_samples",
                                         "lr_scheduler", "step", "iteration", "client_state"})
    _assert_secret_absent(tmp_path)
    record(fault="NaN/inf loss on one rank", case=spec,
           survived="skipped on both ranks, params + optimizer state bitwise unchanged, counted",
           lost="the poisoned steps only")


def test_abort_after_k_consecutive_nonfinite_steps(corpus, tmp_path, record):
    code = launch(tmp_path, corpus, ["training.max_steps=8",
                                     "training.max_consecutive_skipped_steps=3"],
                  env={"WAVLM_DS_INJECT_NAN": "2@0,3@1,4@0:inf,5@1"})
    assert code == 3
    assert max(r["step"] for r in metrics(tmp_path)) == 4  # aborted at the third in a row
    assert "3 consecutive steps with non-finite gradients: aborting" in \
        (tmp_path / "launch_ds_0.log").read_text()
    record(fault="K non-finite steps in a row", case="K=3, steps 2-4 poisoned on alternating ranks",
           survived="abort with exit 3 after step 4", lost="-")


def test_wrong_bf16_kernel_stops_every_rank_before_training(corpus, tmp_path, record):
    """A block made wrong in bf16 only (what oneDNN's AMX conv does to the positional conv)
    stops a bf16 run at start-up on any CPU, every rank naming the module; nothing trains."""
    code = launch(tmp_path, corpus, ["training.max_steps=2"], ds=ds_config(precision="bf16"),
                  env={BF16_ERROR_ENV: "blocks.1"})
    log = (tmp_path / "launch_ds_0.log").read_text()
    assert code == 6, log[-3000:]
    assert log.count("this device computes blocks.1 wrong in bfloat16") >= 1
    assert "blocks.1: output differs from fp32 by 0.5" in log and "--precision fp32" in log
    assert not (tmp_path / "metrics.jsonl").exists() or not metrics(tmp_path)
    record(fault="a module wrong in bf16 only (injected: blocks.1)", case="bf16 run, 2 ranks",
           survived="stopped before step 1, exit 6, module named", lost="-")


def _assert_secret_absent(run_dir: Path) -> None:
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"secret leaked into {path}"


def test_malicious_files_are_refused(reference, tmp_path, record):
    """Checkpoint files with a pickled os.system call (and a manifest rewritten to match, as
    an attacker with write access would): refused by our loader and by the export tool,
    which goes through DeepSpeed's zero_to_fp32 loader; shard members are never unpickled."""
    PWNED.unlink(missing_ok=True)
    src = reference / "checkpoints" / "step00000012"
    names = ("mp_rank_00_model_states.pt", optimizer_state_files(src)[0],
             "trainer_state_rank00000.pt")
    for name in names:
        ckpt = tmp_path / name / "checkpoints" / src.name
        ckpt.mkdir(parents=True)
        for f in src.iterdir():
            (ckpt / f.name).write_bytes(f.read_bytes())
        state = safe_load(src / name)
        state["payload"] = Evil()
        torch.save(state, ckpt / name)
        manifest = json.loads((ckpt / MANIFEST).read_text())
        for entry in manifest["files"]:
            path = ckpt / entry["file"]
            entry.update(bytes=path.stat().st_size, sha256=sha256_file(path))
        (ckpt / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(CheckpointError, match="refused"):
            safe_load(ckpt / name)
        if name.startswith("trainer_state"):
            continue  # export does not read it; resume reads it with safe_load (above)
        export = subprocess.run([sys.executable, str(ROOT / "tools" / "export.py"), "model",
                                 str(ckpt.parent.parent), "--out", str(tmp_path / "out")],
                                capture_output=True, text=True, cwd=ROOT, env=launcher_env())
        assert export.returncode != 0, name
        assert "Weights only load failed" in export.stderr, export.stderr[-2000:]
        assert not (tmp_path / "out" / "model.safetensors").exists()
    # A labels member holding a pickled object array: np.load(allow_pickle=False) refuses.
    bad = Sample("k", "s.tar", 1.0, b"", "flac", labels=pickle.dumps(Evil()))
    stats: Counter = Counter()
    assert crop_labels(bad, 16000, 0, stats) is None and stats["bad_labels:s.tar:k"] == 1
    assert not PWNED.exists()
    record(fault="malicious pickles (checkpoint files, export tool, labels member)",
           case=f"{len(names)} checkpoint files, 2 exports, 1 labels member",
           survived="all refused, no code ran", lost="-")

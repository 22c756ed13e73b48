"""The GPU path's properties that a CPU can count: host syncs per step in the real loop.
(The prebuilt ops with TORCH_EXTENSIONS_DIR unset: test_trainer's reference run; model.compile
through the engine: test_gpu_check.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.integration.conftest import corpus_overrides, ds_config
from wavlm_ds.launch import ROOT, free_port

pytestmark = pytest.mark.slow
STEPS = 6


def test_at_most_one_host_sync_per_step(tiny_corpus, tmp_path):
    """Non-logging steps of the real loop (mixing with the noise stream, layerdrop, dropout,
    ZeRO-2 + bf16): at most 1 synchronizing call per step outside DeepSpeed (the stop-flag
    agreement); DeepSpeed's own are reported, not limited."""
    ds = ds_config(train_batch_size=8)
    ds_path = tmp_path / "ds.json"
    ds_path.write_text(json.dumps(ds))
    out = tmp_path / "syncs.json"
    args = ["--config", str(ROOT / "configs" / "demo.yaml"), "--deepspeed_config", str(ds_path),
            "--run-dir", str(tmp_path / "run"), "--resume", "never"]
    for item in corpus_overrides(tiny_corpus) + [
            f"training.max_steps={STEPS}", "logging.log_every_steps=1000",
            "training.eval_every_steps=1000", "training.save_every_steps=1000",
            "data.num_workers=1", "data.noise_workers=1", "data.mix_prob=0.5",
            "model.layerdrop=0.2", "data.max_duration_s=3.0"]:
        args += ["--set", item]
    env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_SIZE="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "integration" / "count_syncs.py"),
                           str(out), "--", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = json.loads(out.read_text())
    report = {}
    for step in range(2, STEPS):  # step 1 warms up; the last step saves a checkpoint
        calls = counts.get(str(step), {})
        ours = {k: v for k, v in calls.items() if k.startswith("ours:")}
        host = {k for k in calls if k.startswith("host:")}
        report[step] = {"ours": ours, "deepspeed": {k: v for k, v in calls.items()
                                                    if k.startswith("deepspeed:")}}
        assert sum(ours.values()) <= 1, report[step]
        assert set(ours) <= {"ours:train.py:run:item"}, ours
        assert host <= {f"host:{s}:{m}" for s in ("engine.py:host_batch_info",
                                                  "encoder.py:draw_layerdrop",
                                                  "encoder.py:is_padded")
                        for m in ("item", "tolist", "__bool__", "__float__", "__int__")}, host
    print(json.dumps(report, indent=1))  # DeepSpeed's own syncs, for BENCHMARKS.md

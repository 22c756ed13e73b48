"""The GPU path's properties that a CPU can count: host syncs per step in the real loop,
the prebuilt ops used with TORCH_EXTENSIONS_DIR unset, model.compile through the engine."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import corpus_overrides, ds_config
from wavlm_ds.launch import ROOT, free_port, train_command

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


def test_prebuilt_ops_without_torch_extensions_dir(tiny_corpus, tmp_path):
    """The README's bare launcher command with TORCH_EXTENSIONS_DIR unset (and a fresh HOME,
    so torch's default cache would be empty): train.py points it at the venv's prebuilt
    cache, nothing is compiled, nothing lands in ~/.cache. (model.compile through the
    engine is stepped by tools/gpu_check.sh --dry-run, tests/integration/test_gpu_check.py.)"""
    ds_path = tmp_path / "ds.json"
    ds_path.write_text(json.dumps(ds_config()))
    cmd = train_command(ROOT / "configs" / "demo.yaml", ds_path, tmp_path / "run",
                        corpus_overrides(tiny_corpus) + [
                            "training.max_steps=2",
                            "training.eval_every_steps=1000", "data.max_duration_s=2.0"],
                        resume="never")
    env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
    env.update(HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    (tmp_path / "home").mkdir()
    prebuilt = Path(sys.prefix) / "torch_extensions"
    before = {p: p.stat().st_mtime_ns for p in prebuilt.rglob("*.so")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert before and {p: p.stat().st_mtime_ns for p in prebuilt.rglob("*.so")} == before
    for marker in ("Building extension module", "Emitting ninja build file"):
        assert marker not in log
    assert not (tmp_path / "home" / ".cache" / "torch_extensions").exists()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["implementations"]
    assert summary["compile"] is False and summary["attention_impl"] == "blocked"
    assert log.count("attention blocked, log-Mel torch, compile False") == 2  # each rank

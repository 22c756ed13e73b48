"""tools/gpu_check.sh --dry-run: every stage of the GPU check at tiny sizes on CPU.

Also the one test of model.compile through the DeepSpeed engine (ZeRO-2, bf16, FusedAdam):
the `compiled` stage steps bench_throughput's real trainer step with compiled blocks."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from wavlm_ds.launch import ROOT, free_port

pytestmark = pytest.mark.slow


def test_dry_run_runs_every_stage(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, MASTER_PORT=str(free_port()))
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), str(tmp_path), "--dry-run"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:]
    stages = [json.loads(x) for x in (tmp_path / "stages.jsonl").read_text().splitlines()]
    assert [s["stage"] for s in stages] == ["selftest", "eager", "compiled", "sweep", "ops"]
    assert all(s["rc"] == 0 for s in stages), stages
    selftest = json.loads((tmp_path / "selftest.json").read_text())
    assert selftest["cpu"]["ok"] and selftest["enabled"] == {}
    eager = json.loads((tmp_path / "eager.json").read_text())["rows"][0]
    compiled = json.loads((tmp_path / "compiled.json").read_text())["rows"][0]
    assert "error" not in eager and "error" not in compiled
    assert (eager["compile"], eager["attention_impl"]) == (False, "blocked")
    assert (compiled["compile"], compiled["attention_impl"]) == (True, "sdpa")
    sweep = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert [r["micro"] for r in sweep] == [1, 2] and all("error" not in r for r in sweep)
    assert "mask" in json.loads((tmp_path / "ops.json").read_text())

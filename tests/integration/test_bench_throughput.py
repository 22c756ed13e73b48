"""tools/bench_throughput.py on CPU: one process and 2 ranks through the launcher."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wavlm_ds.launch import ROOT, free_port, launcher_env

pytestmark = pytest.mark.slow
TOOL = ROOT / "tools" / "bench_throughput.py"
ARGS = ["--steps", "2", "--warmup", "1", "--seconds", "1.5", "--min-seconds", "0.6",
        "--set", "logging.progress_bar=false", "--set", "data.min_duration_s=0.5"]


def check(report: dict, world: int) -> None:
    rows = report["rows"]
    assert [r["micro"] for r in rows] == [1, 2] and all("error" not in r for r in rows)
    for r in rows:
        assert r["world"] == world and r["accum"] == 4
        assert abs(r["flop_counter_ratio"] - 1) < 0.03  # analytic FLOPs vs FlopCounterMode
        assert r["samples_per_s"] == pytest.approx(r["micro"] * 4 * world / r["step_s"])
        assert r["mfu"] is None and r["peak_memory_gib"] > 0.1  # CPU: no peak, RSS measured
        assert r["attention_impl"] == "blocked" and r["compile"] is False  # resolved, CPU
        # rows of random length in [0.6, 1.5] s, bucketed: padding exists, and the model
        # FLOPs (valid frames) are below the hardware FLOPs (padded frames)
        assert r["lengths"] == "uniform"
        assert 0 <= r["padding_fraction"] < 0.5
        assert r["tflops_per_device"] <= r["hardware_tflops_per_device"]
        if r["micro"] > 1:
            assert r["padding_fraction"] > 0


def test_single_process_sweep(tmp_path):
    out = tmp_path / "bt.json"
    proc = subprocess.run([sys.executable, str(TOOL), *ARGS, "--sweep", "micro=1,2",
                           "--json", str(out)], capture_output=True, text=True, cwd=ROOT,
                          env=launcher_env({"MASTER_PORT": str(free_port())}), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| 1 x 4 x 1 |" in proc.stdout and "| 2 x 4 x 1 |" in proc.stdout
    check(json.loads(out.read_text()), world=1)


def test_two_ranks_through_launcher(tmp_path):
    out = tmp_path / "bt.json"
    cmd = [str(Path(sys.executable).with_name("deepspeed")), "--hostfile", str(ROOT / "hostfiles" / "localhost"),
           "--no_ssh_check", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           str(TOOL), *ARGS, "--sweep", "micro=1,2", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=launcher_env(),
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    check(json.loads(out.read_text()), world=2)

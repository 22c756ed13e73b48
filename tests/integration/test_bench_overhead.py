"""tools/bench_overhead.py runs both loops interleaved and reports consistent medians."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from wavlm_ds.launch import ROOT, free_port, launcher_env

pytestmark = pytest.mark.slow


def test_overhead_tool_interleaves_and_reports(tmp_path):
    out = tmp_path / "overhead.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_overhead.py"), "--preset",
                           "debug", "--seconds", "0.5", "--micro", "2", "--accum", "2",
                           "--steps", "3", "--warmup", "1", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env=launcher_env({"MASTER_PORT": str(free_port())}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert len(r["bare_s"]) == len(r["deepspeed_s"]) == 3
    assert r["bare_median_s"] == statistics.median(r["bare_s"])
    assert r["ratio"] == pytest.approx(r["deepspeed_median_s"] / r["bare_median_s"])
    assert r["median_pair_ratio"] > 0
    assert "ratio DeepSpeed / bare" in proc.stdout

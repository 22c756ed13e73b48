"""The GPU self-test's CPU parts run here; without CUDA it enables nothing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wavlm_ds.ops import gpu_gate

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_selftest_cpu_parts_and_no_record(tmp_path):
    record = tmp_path / "record.json"
    env = {"WAVLM_DS_SELFTEST_RECORD": str(record), "PATH": "/usr/bin:/bin",
           "TORCH_EXTENSIONS_DIR": str(ROOT / ".venv" / "torch_extensions")}
    out = tmp_path / "report.json"
    subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_selftest.py"), "--json", str(out)],
                   check=True, cwd=ROOT, env=env, capture_output=True, timeout=600)
    report = json.loads(out.read_text())
    assert report["cpu"]["ok"], report["cpu"]
    assert report["cpu"]["blocked_attention_fp32_rel_err"] <= 1e-5
    assert report["cpu"]["sdpa_attention_fp32_rel_err"] <= 1e-5
    assert report["cpu"]["masker_compiled_equals_eager"] is True
    assert report["cpu"]["logmel_fast_vs_reference_max_abs"] <= 1e-4
    assert report["cuda"].startswith("skipped") and report["enabled"] == {}
    assert not record.exists()


def test_gate_needs_cuda_and_a_passed_record(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_gate, "_cache", {})
    gpu_gate.configure("auto", str(tmp_path / "r.json"))
    cpu = torch.device("cpu")
    try:
        assert not gpu_gate.cuda_fast_path_enabled("attention_flex", cpu)
        gpu_gate.configure("force", str(tmp_path / "r.json"))
        assert not gpu_gate.cuda_fast_path_enabled("attention_flex", cpu)  # CPU never
        (tmp_path / "r.json").write_text(json.dumps({"cuda|x": {"ops": {"attention_flex": True}}}))
        assert gpu_gate.passed_ops(cpu) == set()
        with pytest.raises(ValueError, match="unknown fast path"):
            gpu_gate.cuda_fast_path_enabled("attention", cpu)
        with pytest.raises(ValueError, match="model.fast_paths"):
            gpu_gate.configure("always")
    finally:
        gpu_gate.configure("auto", "")


def test_record_lives_in_the_venv_by_default(monkeypatch):
    monkeypatch.delenv(gpu_gate.RECORD_ENV, raising=False)
    gpu_gate.configure("auto", "")
    assert gpu_gate.record_path() == Path(sys.prefix) / "share" / "wavlm_ds" / "gpu_selftest.json"

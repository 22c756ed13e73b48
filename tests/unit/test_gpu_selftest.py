"""The GPU self-test (wavlm_ds/ops/gpu_selftest.py): its CPU parts run here; each check is
written as it ends and one failure never disables another op; the tolerance catches a wrong
kernel; without CUDA it enables nothing; the gate and its record."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from wavlm_ds.ops import gpu_gate
from wavlm_ds.ops import gpu_selftest as S


def test_cpu_groups_write_their_checks_and_no_record(tmp_path, monkeypatch):
    record = tmp_path / "record.json"
    monkeypatch.setenv(gpu_gate.RECORD_ENV, str(record))
    out = tmp_path / "report.json"
    report = S.run_selftest(S.GROUPS, out, tiny=True)
    assert json.loads(out.read_text()) == report and report["ok"]
    checks = report["checks"]
    for impl in ("blocked", "sdpa"):
        errors = checks[f"cpu_{impl}_parity"]["T64_bfloat16_rel_err"]
        assert set(errors) == set(S.TENSORS) and all(e <= S.BF16_SUM_REL_TOL for e in errors.values())
        assert max(checks[f"cpu_{impl}_parity"]["T64_float32_rel_err"].values()) <= S.FP32_REL_TOL
    assert checks["cpu_masker_and_logmel"]["logmel_fast_vs_reference_max_abs"] <= 1e-4
    assert checks["flex_parity"]["skipped"] == "needs CUDA"
    assert report["tolerances"]["bf16"] == S.BF16_REL_TOL
    assert report["cuda"].startswith("skipped") and report["enabled"] == {}
    assert not record.exists()


def test_a_wrong_kernel_fails_its_parity_with_every_figure_kept(monkeypatch):
    def no_bias(q, k, v, gate, rel_bias, pad):  # forgets the relative position bias
        return S.sdpa_gated_attention(q, k, v, gate * 0, rel_bias, pad)

    monkeypatch.setitem(S.IMPLS, "no_bias", no_bias)
    out = S.attention_parity("no_bias", torch.device("cpu"), S.CPU_CASES, B=2, H=4, D=16)
    assert out["ok"] is False
    assert any("[out]" in f for f in out["failed"]) and "T64_float32_rel_err" in out
    assert "T64_bfloat16_rel_err" in out  # measured after the fp32 miss, not cut short


def test_checks_are_written_one_at_a_time_and_a_failure_stops_nothing(tmp_path):
    path = tmp_path / "r.json"
    report = S.Report(path, torch.device("cpu"))
    seen = []
    report.check("first", lambda: {"x": 1})
    report.check("broken", lambda: 1 / 0)
    report.check("third", lambda: seen.append(json.loads(path.read_text())) or {})
    assert list(seen[0]["checks"]) == ["first", "broken"]  # on disk before the third ran
    assert seen[0]["checks"]["broken"]["ok"] is False
    assert "ZeroDivisionError" in seen[0]["checks"]["broken"]["error"]
    assert json.loads(path.read_text())["checks"]["third"]["ok"] is True


def test_unknown_group_is_an_error_that_names_the_groups():
    with pytest.raises(ValueError, match="sdpa"):
        S.run_selftest(("attention",), None, tiny=True)


def test_record_is_updated_per_op(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_gate, "_cache", {})
    monkeypatch.setattr(gpu_gate, "device_key", lambda device: "H200|torch=2.11|triton=3.6")
    gpu_gate.configure("auto", str(tmp_path / "r.json"))
    try:
        device = torch.device("cpu")
        gpu_gate.write_result(device, {"attention_flex": True})
        gpu_gate.write_result(device, {"logmel_triton": False})
        record = json.loads((tmp_path / "r.json").read_text())
        assert record == {"H200|torch=2.11|triton=3.6": {
            "ops": {"attention_flex": True, "logmel_triton": False}}}
        assert gpu_gate.passed_ops(device) == {"attention_flex"}
    finally:
        gpu_gate.configure("auto", "")


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


def test_cuda_flex_group_records_each_verdict_as_it_is_decided(tmp_path, monkeypatch):
    """The CUDA branch with its kernels faked: flex failing parity is recorded off, and the
    Triton log-Mel verdict is still decided and recorded, each right after its checks."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    recorded = []
    monkeypatch.setattr(gpu_gate, "write_result",
                        lambda device, ops: recorded.append(dict(ops)) or tmp_path / "rec.json")
    monkeypatch.setattr(S, "attention_parity", lambda impl, device: {"ok": False, "failed": ["x"]})
    monkeypatch.setattr(S, "attention_timings", lambda impls, device: {
        "time_sdpa_fwd_bwd_s": 2.0, "time_flex_fwd_bwd_s": 1.0})
    monkeypatch.setattr(S, "no_host_sync", lambda device: {})
    monkeypatch.setattr(S, "logmel_triton", lambda device: {
        "time_torch_s": 2.0, "time_triton_s": 1.0, "triton_max_abs": 1e-5})

    def compiled_block(device):
        assert recorded == [{"attention_flex": False}, {"logmel_triton": True}]
        raise RuntimeError("inductor failed")

    monkeypatch.setattr(S, "compiled_block", compiled_block)
    report = S.Report(tmp_path / "r.json", torch.device("cuda"))
    S.run_flex_group(report, tiny=False)
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["enabled"] == {"attention_flex": False, "logmel_triton": True}
    assert data["checks"]["flex_parity"]["ok"] is False and data["checks"]["flex_timing"]["ok"]
    assert "inductor failed" in data["checks"]["compiled_block"]["error"]

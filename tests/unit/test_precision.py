"""The CPU precision choice: bf16 only where the CPU computes bf16 natively."""
from __future__ import annotations

import json

import pytest
import torch

from wavlm_ds.launch import ROOT
from wavlm_ds.precision import apply_precision, choose_cpu_precision, resumed_precision


@pytest.mark.parametrize("avx512_bf16,amx,expected", [(False, False, "fp32"), (True, False, "bf16"),
                                                      (False, True, "bf16")])
def test_auto_picks_bf16_only_when_native(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    choice = choose_cpu_precision("auto")
    assert choice.dtype == expected
    assert ("emulated" in choice.reason) == (expected == "fp32")
    assert torch.backends.cpu.get_cpu_capability() in choice.reason
    assert choose_cpu_precision("bf16").dtype == "bf16"  # asked for: kept, and said so
    assert "as asked" in choose_cpu_precision("fp32").reason


def test_fp32_keeps_the_same_engine_settings():
    ds = json.loads((ROOT / "ds_configs" / "cpu_smoke.json").read_text())
    fp32 = apply_precision(ds, choose_cpu_precision("fp32"))
    assert fp32["bf16"]["enabled"] is False and "grad_accum_dtype" not in json.dumps(fp32)
    assert ds["bf16"]["enabled"] is True  # the input is not modified
    for key in ("zero_optimization", "optimizer", "scheduler", "gradient_accumulation_steps",
                "train_batch_size"):
        assert fp32[key] == ds[key]
    assert apply_precision(ds, choose_cpu_precision("bf16"))["bf16"]["enabled"] is True
    with pytest.raises(ValueError, match="precision='fp16'"):
        choose_cpu_precision("fp16")


def test_a_resumed_run_keeps_the_precision_it_started_in(tmp_path):
    """auto does not decide again on resume (its timing may come out the other way under
    another load); asking for the other precision is refused with the fix."""
    ds = json.loads((ROOT / "ds_configs" / "cpu_smoke.json").read_text())
    for dtype in ("bf16", "fp32"):
        trained = tmp_path / dtype / "ds_config.json"
        trained.parent.mkdir()
        trained.write_text(json.dumps(apply_precision(ds, choose_cpu_precision(dtype))))
        kept = resumed_precision("auto", trained)
        assert kept.dtype == dtype and "kept from the run being resumed" in kept.reason
        assert resumed_precision(dtype, trained).dtype == dtype
        other = "fp32" if dtype == "bf16" else "bf16"
        with pytest.raises(ValueError, match=f"trained in {dtype}.*--precision {dtype}.*"
                                             f"another --run-dir"):
            resumed_precision(other, trained)

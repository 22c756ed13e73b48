"""The planner's arithmetic (wavlm_ds.plan, tools/estimate.py): hand-computed cases,
DeepSpeed's own ZeRO-2 formula, activation estimates against measured live bytes on CPU,
and the warnings for inputs that disagree."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import pytest

from wavlm_ds.config import load_config
from wavlm_ds.launch import ROOT
from wavlm_ds.model.flops import forward_flops
from wavlm_ds.plan import (Cluster, activation_bytes, deepspeed_zero2_gpu_bytes,
                           measure_activations, model_states, plan, steps_for_budget,
                           zero_buffers)
from wavlm_ds.presets import get_preset

RECIPE = ROOT / "configs" / "wavlm_large_plus.yaml"
RECIPE_DS = ROOT / "ds_configs" / "a100x128_zero2_bf16.json"
PARAMS = (1_000_000_000, 10_000_000)  # skip the meta-device build in arithmetic tests


@pytest.mark.parametrize("params,per_node,nodes", [(605_000_000, 8, 16), (95_000_000, 8, 1),
                                                   (1_000_003, 4, 3), (316_000_000, 1, 1)])
def test_zero2_terms_equal_deepspeeds_formula(params, per_node, nodes):
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    _, ds_gpu = estimate_zero2_model_states_mem_needs(params, per_node, nodes, cpu_offload=False)
    ours = sum(model_states(params, per_node * nodes, stage=2).values())
    assert int(ours) == pytest.approx(ds_gpu, abs=1)
    assert deepspeed_zero2_gpu_bytes(params, per_node, nodes) == ds_gpu  # what the plan prints


def test_model_states_by_stage_hand_computed():
    P, N = 1_000_000_000, 4
    total = {st: sum(model_states(P, N, st, largest_layer=10).values()) for st in range(4)}
    assert total[0] == 20 * P  # 2 + 2 + 4 + 12 bytes per parameter
    assert total[1] == 8 * P + 12 * P / N
    assert total[2] == 2 * P + 18 * P / N
    assert total[3] == 20 * P / N + 2 * 10


def test_buffers_from_the_recipe_config():
    ds = json.loads(RECIPE_DS.read_text())
    buf = zero_buffers(ds, 2)
    # overlap_comm: two bf16 reduce buckets of 2e8 elements, one bf16 all-gather bucket
    assert sum(buf.values()) == 2 * 2e8 * 2 + 2e8 * 2
    assert zero_buffers(ds, 0) == {}
    assert sum(zero_buffers(ds, 1).values()) == 2 * 2e8 * 4 + 2e8 * 2  # fp32 accumulation


def test_activation_terms_hand_computed_on_cuda():
    m = dataclasses.replace(get_preset("debug"), dropout=0.0, attention_dropout=0.0,
                            num_layers=1, model_dim=8, num_heads=2, ffn_dim=16)
    a = activation_bytes(m, micro=1, num_input_frames=20, act_bytes=2, checkpointing=False)
    bT, d, f, H = 10, 8, 16, 2
    block = 2 * bT * d * 9 + 2 * bT * f * 2 + 4 * H * 10 + 3 * 2 * H * 10 + 16 * bT
    assert a["per_block"] == block
    ckpt = activation_bytes(m, 1, 20, 2, checkpointing=True)
    assert ckpt["saved"] == a["outside_blocks"] + 2 * bT * d
    assert ckpt["peak"] < a["peak"] + block  # recompute holds one block at a time


# base's widths (768, FFN 3072, 12 heads, its front end) at 4 of its 12 blocks: the
# estimate counts blocks linearly, so 4 check the per-block terms at those widths as well
# as 12 would; all 12 cost a minute per case in bf16 on a CPU that emulates it.
@pytest.mark.parametrize("preset,layers,micro,seconds", [
    ("debug", 2, 2, 4.0), ("debug", 2, 4, 8.0), ("base", 4, 1, 4.0)])
@pytest.mark.parametrize("ckpt", [False, True])
def test_activation_estimate_within_20pct_of_measured_peak(preset, layers, micro, seconds, ckpt):
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    model = dataclasses.replace(get_preset(preset), attention_dropout=0.0, dropout=0.1,
                                activation_checkpointing=ckpt, num_layers=layers)
    cfg = dataclasses.replace(cfg, model=model)
    T_in = round(seconds * 100)
    got = measure_activations(cfg, micro, T_in)
    est = activation_bytes(model, micro, T_in, 2, ckpt, device="cpu")
    assert 0.8 < est["peak"] / got["peak"] < 1.2, (est["peak"], got["peak"])
    assert 0.8 < est["saved"] / got["saved"] < 1.2, (est["saved"], got["saved"])


def test_recipe_time_and_budget_hand_computed():
    cfg, ds = load_config(RECIPE), json.loads(RECIPE_DS.read_text())
    cluster = Cluster(gpus=128, peak_tflops=312.0, mfu=0.5)
    p = plan(cfg, ds, cluster, 16.0, 100_000.0, params=PARAMS, budget_days=1.0)
    flops = 3 * forward_flops(cfg.model, 1600) * 2048
    assert p["flops"]["train_per_step"] == flops
    compute = flops / (128 * 312e12 * 0.5)
    # ZeRO-2, accumulation 4, 16 nodes of 1600 Gb/s: 4 reduce-scatters (half overlapped)
    # and one all-gather of S = 2 bytes x 1e9 parameters, S x 15/16 per node each
    per_node = 2e9 * 15 / 16 / 200e9
    step = compute + 0.5 * 4 * per_node + per_node
    assert p["time"]["compute_s"] == pytest.approx(compute)
    assert p["time"]["step_s"] == pytest.approx(step)
    assert p["audio_hours_per_step"] == pytest.approx(2048 * 16 / 3600)
    assert p["epoch"]["steps"] == pytest.approx(100_000 / (2048 * 16 / 3600))
    assert p["budget"]["derived_total_num_steps"] == int(86400 / step) // 1000 * 1000
    assert p["budget"]["gpu_hours"] == 24 * 128


def test_steps_for_budget_rounds_down():
    assert steps_for_budget(86400, 0.5) == 172_000
    assert steps_for_budget(100, 1.0) == 1000  # never below one thousand


def test_recipe_uses_the_steps_its_budget_buys():
    """ds_configs/a100x128_zero{1,2}_bf16.json hold what `tools/estimate.py --budget-days 21`
    derives with its stated defaults (A100 312 TFLOP/s, 35% MFU, 16 s segments, DGX A100
    fabric, half the gradient reduction overlapped)."""
    cfg = load_config(RECIPE)
    for path in (RECIPE_DS, RECIPE_DS.with_name("a100x128_zero1_bf16.json")):
        ds = json.loads(path.read_text())
        p = plan(cfg, ds, Cluster(gpus=128, peak_tflops=312.0, mfu=0.35), 16.0, 100_000.0,
                 budget_days=21)
        assert ds["scheduler"]["params"]["total_num_steps"] == \
            p["budget"]["derived_total_num_steps"], path
        assert not [w for w in p["warnings"] if "total_num_steps" in w]


def test_inconsistent_inputs_are_flagged():
    cfg, ds = load_config(RECIPE), json.loads(RECIPE_DS.read_text())
    ds["scheduler"]["params"]["total_num_steps"] = 400_000
    p = plan(cfg, ds, Cluster(gpus=128, peak_tflops=312.0, mfu=0.35), 16.0, 100_000.0,
             params=PARAMS, budget_days=21, budget_gpu_hours=1.5e6)
    text = "\n".join(p["warnings"])
    assert "total_num_steps=400000" in text and "21-day budget" in text
    assert "1,500,000 GPU-hours on 128 GPUs is 488.3 days" in text
    assert "64,512 GPU-hours" in text  # 3 weeks x 128 GPUs: the consistent figure


def test_unknown_peak_and_too_big_are_said_not_crashed():
    cfg, ds = load_config(RECIPE), json.loads(RECIPE_DS.read_text())
    ds.update(train_micro_batch_size_per_gpu=128, gradient_accumulation_steps=1,
              train_batch_size=128 * 128)
    p = plan(cfg, ds, Cluster(gpus=128, peak_tflops=None, hbm_gib=80.0), 16.0, None,
             params=PARAMS)
    text = "\n".join(p["warnings"])
    assert "unknown device peak" in text and "time" not in p
    assert "does not fit" in text and "GiB HBM" in text


def test_cli_prints_the_plan_and_writes_steps(tmp_path):
    ds_copy = tmp_path / "ds.json"
    shutil.copy(RECIPE_DS, ds_copy)
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "estimate.py"),
                          "--config", str(RECIPE), "--deepspeed_config", str(ds_copy),
                          "--gpus", "128", "--budget-days", "7", "--write-steps",
                          "--device", "NoSuchGPU", "--peak-tflops", "312",
                          "--json", str(tmp_path / "plan.json")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "| parameters | 605.1 M" in out.stdout and "ZeRO-3" in out.stdout
    result = json.loads((tmp_path / "plan.json").read_text())
    written = json.loads(ds_copy.read_text())["scheduler"]["params"]["total_num_steps"]
    assert written == result["budget"]["derived_total_num_steps"]
    assert ds_copy.read_text().count("\n") == RECIPE_DS.read_text().count("\n")  # layout kept


def test_corpus_hours_from_indexes_and_missing_sources_named(tmp_path):
    from wavlm_ds.config import SourceConfig
    from wavlm_ds.data.index import ShardInfo, sources_hours, write_index

    (tmp_path / "a").mkdir()
    good = write_index(tmp_path / "a", [ShardInfo("a-000000.tar", 10, 1.5, 1, "x"),
                                        ShardInfo("a-000001.tar", 10, 2.0, 1, "y")])
    (tmp_path / "bad.json").write_text("{not json")
    sources = [SourceConfig("a", str(good)), SourceConfig("gone", str(tmp_path / "no.json")),
               SourceConfig("bad", str(tmp_path / "bad.json")),
               SourceConfig("brace", str(tmp_path / "x-{000..009}.tar"))]
    assert sources_hours(sources) == (3.5, ["gone", "bad", "brace"])

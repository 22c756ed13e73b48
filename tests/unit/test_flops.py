"""The analytic FLOP count (wavlm_ds/model/flops.py) against torch's FlopCounterMode at debug
size, on the explicit-bias attention path (FlopCounterMode counts nothing for the CPU flash
kernel), on real tensors and on the meta device; and the benchmark's MFU counting each timed
step with that step's own layerdrop draws."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from wavlm_ds import engine as E
from wavlm_ds.bench import throughput as T
from wavlm_ds.config import ModelConfig, RunConfig
from wavlm_ds.model import WavLMEncoder
from wavlm_ds.model.flops import forward_flops

# debug preset with an even and an odd positional kernel (an even one computes one extra frame)
CONFIGS = [ModelConfig(preset="debug", attention_impl="reference"),
           ModelConfig(preset="debug", attention_impl="reference", conv_pos_kernel=15)]


def counted(model: torch.nn.Module, device: str, batch: int, frames: int) -> int:
    features = torch.randn(batch, frames, 80, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(features, torch.full((batch,), frames, device=device))
    return counter.get_total_flops()


@pytest.mark.parametrize("cfg", CONFIGS, ids=["even_kernel", "odd_kernel"])
@pytest.mark.parametrize("frames", [64, 201])
def test_analytic_forward_flops_equal_flop_counter(cfg, frames):
    torch.manual_seed(0)
    real = counted(WavLMEncoder(cfg).eval(), "cpu", 3, frames)
    with torch.device("meta"):
        meta_model = WavLMEncoder(cfg).eval()
    meta = counted(meta_model, "meta", 3, frames)
    assert meta == real  # the meta device counts what real tensors count
    # matmuls and convolutions exactly; elementwise work is not counted by either
    assert real / forward_flops(cfg, frames, 3) == pytest.approx(1.0, abs=1e-3)


def test_meta_ratio_at_the_recipe_size_costs_no_arithmetic():
    large_plus = ModelConfig(preset="large_plus", model_dim=1280, num_layers=30, num_heads=20,
                             ffn_dim=5120, frontend_dim=1024, conv_pos_kernel=128,
                             conv_pos_groups=16)
    assert T.meta_flop_counter_ratio(large_plus, 4, 1601) == pytest.approx(1.0, abs=1e-3)


def fake_result(frames: list[int], padded: int, micros: int) -> E.StepResult:
    mbs = [E.MicroBatch(features=torch.zeros(len(frames), padded, 80), targets=None,
                        frame_lengths=None, mask=None, audio_seconds=1.0,
                        host_frame_lengths=torch.tensor(frames),
                        valid=torch.ones(len(frames), dtype=torch.bool)) for _ in range(micros)]
    totals = torch.tensor([0.0, 0.0, 4.0, 2.0, 10.0, float(sum(frames) * micros)])
    return E.StepResult(mbs, torch.tensor(1.0), totals, [])


def test_each_timed_step_counts_its_own_layerdrop_draws():
    cfg = dataclasses.replace(RunConfig(), model=ModelConfig(num_layers=30, layerdrop=0.3))
    runs = [T.Timed(step, 0.0, 1.0, fake_result([100, 80], 100, 2)) for step in (3, 4, 5)]
    row = T.summarize(cfg, runs, micro=2, accum=2, world=1, peak=None, measured_peak=None)
    per_step = [E.step_flops(cfg, r.result, r.step)[0] for r in runs]
    assert row["tflops_per_device"] == pytest.approx(sorted(per_step)[1] / 1e12)
    step_zero = E.step_flops(cfg, runs[0].result, 0)[0]  # the old proxy, same for every run
    assert set(per_step) != {step_zero}
    assert len(set(per_step)) > 1  # seed 1234: steps 3, 4, 5 drop different layer counts

"""The encoder (oracle parity: test_encoder_oracles.py): padding invariance, no leak through masks, gradients,
FLOPs, presets and bad input."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from wavlm_ds.config import ModelConfig
from wavlm_ds.model import WavLMEncoder
from wavlm_ds.model.flops import forward_flops, parameter_count
from wavlm_ds.ops.span_mask import span_mask
from wavlm_ds.presets import PRESETS, get_preset, preset_table

TINY = dataclasses.replace(get_preset("debug"), dropout=0.0, attention_dropout=0.0,
                           layerdrop=0.0, attention_impl="reference")


def make(cfg: ModelConfig = TINY, seed: int = 0) -> WavLMEncoder:
    torch.manual_seed(seed)
    return WavLMEncoder(cfg).eval()


@pytest.mark.parametrize("garbage", [1e4, float("nan")])
def test_padding_invariance_with_garbage(garbage):
    model = make()
    torch.manual_seed(2)
    feats = torch.randn(3, 90, 80)
    lengths = torch.tensor([90, 61, 33])
    mask = span_mask(lengths, 90, generator=torch.Generator().manual_seed(0))
    dirty = feats.clone()
    for b, n in enumerate(lengths.tolist()):
        dirty[b, n:] = garbage if garbage != garbage else garbage * torch.randn(90 - n, 80)
    with torch.no_grad():
        clean_out = model(feats, lengths, mask).hidden
        dirty_out = model(dirty, lengths, mask).hidden
        for b, n in enumerate(lengths.tolist()):
            alone = model(feats[b:b + 1, :n], lengths[b:b + 1], mask[b:b + 1, :n]).hidden[0]
            valid = -(-n // TINY.frame_stack)
            assert torch.allclose(alone, dirty_out[b, :valid], atol=1e-5)
    assert torch.isfinite(dirty_out).all()
    assert torch.equal(clean_out, dirty_out)


def test_masked_content_never_leaks():
    model = make()
    torch.manual_seed(3)
    feats = torch.randn(2, 120, 80)
    lengths = torch.tensor([120, 87])
    mask = span_mask(lengths, 120, ratio=0.5, span=7, generator=torch.Generator().manual_seed(1))
    changed = torch.where(mask[..., None], torch.randn_like(feats) * 100, feats)
    with torch.no_grad():
        a = model(feats, lengths, mask, output_hidden_states=True)
        b = model(changed, lengths, mask, output_hidden_states=True)
    assert torch.equal(a.hidden, b.hidden)
    assert all(torch.equal(x, y) for x, y in zip(a.layer_outputs, b.layer_outputs))
    with torch.no_grad():  # the test can fail: without the mask the change is visible
        assert not torch.equal(model(changed, lengths).hidden, model(feats, lengths).hidden)


def test_gradient_reaches_every_parameter():
    cfg = dataclasses.replace(TINY, layerdrop=0.0)
    model = make(cfg).train()
    feats, lengths = torch.randn(2, 64, 80), torch.tensor([64, 50])
    mask = span_mask(lengths, 64, generator=torch.Generator().manual_seed(0))
    model(feats, lengths, mask).hidden.pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_layerdrop_is_replayable_and_keeps_gradients():
    cfg = dataclasses.replace(TINY, layerdrop=0.5, num_layers=4)
    model = make(cfg).train()
    feats, lengths = torch.randn(2, 40, 80), torch.tensor([40, 30])
    mask = span_mask(lengths, 40, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(7)
    assert model.layerdrop_decisions(gen) == [False, True, False, False]  # one dropped
    outs = [model(feats, lengths, mask, layerdrop_generator=torch.Generator().manual_seed(7)).hidden
            for _ in range(2)]
    assert torch.equal(outs[0], outs[1])
    outs[0].sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="layerdrop_generator"):
        model(feats, lengths)


@pytest.mark.parametrize("preset,frames", [("debug", 101), ("base", 120)])
def test_flops_match_flop_counter(preset, frames):
    cfg = dataclasses.replace(get_preset(preset), attention_impl="reference")
    model = WavLMEncoder(cfg).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(2, frames, 80), torch.tensor([frames, frames]))
    measured = counter.get_total_flops()
    assert abs(measured / forward_flops(cfg, frames, 2) - 1) < 0.03


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("pos_conv_layer_norm", [False, True])
def test_parameter_count_equals_numel(preset, pos_conv_layer_norm):
    cfg = dataclasses.replace(get_preset(preset), pos_conv_layer_norm=pos_conv_layer_norm)
    with torch.device("meta"):
        numel = sum(p.numel() for p in WavLMEncoder(cfg).parameters())
    assert parameter_count(cfg) == numel


def test_presets_and_large_plus_size():
    rows = {r["preset"]: r for r in preset_table()}
    lp = rows["large_plus"]
    assert abs(lp["params"] / 600e6 - 1) <= 0.02
    assert lp["layers"] > 24 and lp["width"] > 1024
    assert rows["large"]["layers"] == 24 and rows["large"]["width"] == 1024
    with pytest.raises(KeyError, match="unknown preset"):
        get_preset("huge")


def test_bad_inputs_are_named():
    model = make()
    f, n = torch.randn(2, 50, 80), torch.tensor([50, 40])
    cases = [((torch.randn(2, 50), n), "features: expected"),
             ((torch.randn(2, 50, 40), n), "features: expected"),
             ((torch.randint(0, 3, (2, 50, 80)), n), "float dtype"),
             ((f, torch.tensor([51, 40])), r"frame_lengths: every value"),
             ((f, torch.tensor([50, 0])), r"frame_lengths: every value"),
             ((f, torch.tensor([50.0, 40.0])), "integer dtype"),
             ((f, torch.tensor([50, 40, 30])), "frame_lengths: expected shape")]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            model(*args)
    with pytest.raises(ValueError, match="mask: expected torch.bool"):
        model(f, n, torch.zeros(2, 50))
    with pytest.raises(ValueError, match="aligned to input frames"):
        model(f, n, torch.zeros(2, 25, dtype=torch.bool))


def test_bf16_forward_is_finite():
    model = make().to(torch.bfloat16)
    out = model(torch.randn(2, 60, 80), torch.tensor([60, 45]))
    assert out.hidden.dtype == torch.bfloat16 and torch.isfinite(out.hidden).all()

"""The encoder: torchaudio parity, padding invariance, no leak through masks, gradients,
FLOPs, presets and bad input."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from wavlm_ds.config import ModelConfig
from wavlm_ds.model import WavLMEncoder
from wavlm_ds.model.flops import forward_flops
from wavlm_ds.ops.span_mask import span_mask
from wavlm_ds.presets import get_preset, preset_table

TINY = dataclasses.replace(get_preset("debug"), dropout=0.0, attention_dropout=0.0,
                           layerdrop=0.0, attention_impl="reference")


def make(cfg: ModelConfig = TINY, seed: int = 0) -> WavLMEncoder:
    torch.manual_seed(seed)
    return WavLMEncoder(cfg).eval()


def torchaudio_encoder(cfg: ModelConfig):
    from torchaudio.models.wav2vec2.components import _get_wavlm_encoder
    return _get_wavlm_encoder(
        in_features=cfg.model_dim, embed_dim=cfg.model_dim, dropout_input=0.0,
        pos_conv_kernel=cfg.conv_pos_kernel, pos_conv_groups=cfg.conv_pos_groups,
        num_layers=cfg.num_layers, num_heads=cfg.num_heads, num_buckets=cfg.num_buckets,
        max_distance=cfg.max_distance, attention_dropout=0.0, ff_interm_features=cfg.ffn_dim,
        ff_interm_dropout=0.0, dropout=0.0, layer_norm_first=True, layer_drop=0.0).eval()


def load_torchaudio_weights(ours: WavLMEncoder, ta) -> None:
    t = ta.transformer
    sd = {"pos_conv.conv.bias": t.pos_conv_embed.conv.bias,
          "pos_conv.conv.parametrizations.weight.original0":
              t.pos_conv_embed.conv.parametrizations.weight.original0,
          "pos_conv.conv.parametrizations.weight.original1":
              t.pos_conv_embed.conv.parametrizations.weight.original1,
          "pos_norm.weight": t.layer_norm.weight, "pos_norm.bias": t.layer_norm.bias,
          "rel_pos.embedding.weight": t.layers[0].attention.rel_attn_embed.weight}
    for i, layer in enumerate(t.layers):
        a, p = layer.attention, f"blocks.{i}."
        sd.update({p + "attention.qkv.weight": a.attention.in_proj_weight,
                   p + "attention.qkv.bias": a.attention.in_proj_bias,
                   p + "attention.out_proj.weight": a.attention.out_proj.weight,
                   p + "attention.out_proj.bias": a.attention.out_proj.bias,
                   p + "attention.gate_linear.weight": a.gru_rel_pos_linear.weight,
                   p + "attention.gate_linear.bias": a.gru_rel_pos_linear.bias,
                   p + "attention.gate_const": a.gru_rel_pos_const.view(-1),
                   p + "attn_norm.weight": layer.layer_norm.weight,
                   p + "attn_norm.bias": layer.layer_norm.bias,
                   p + "ffn_norm.weight": layer.final_layer_norm.weight,
                   p + "ffn_norm.bias": layer.final_layer_norm.bias,
                   p + "ffn_in.weight": layer.feed_forward.intermediate_dense.weight,
                   p + "ffn_in.bias": layer.feed_forward.intermediate_dense.bias,
                   p + "ffn_out.weight": layer.feed_forward.output_dense.weight,
                   p + "ffn_out.bias": layer.feed_forward.output_dense.bias})
    missing, _ = ours.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=False)
    assert all(k.startswith(("frontend.", "final_norm.")) for k in missing), missing


def torchaudio_layers(ta, x: torch.Tensor, padding: torch.Tensor | None) -> list[torch.Tensor]:
    """torchaudio's WavLM transformer driven layer by layer with a key padding mask."""
    t = ta.transformer
    x = t.dropout(t.layer_norm(x + t.pos_conv_embed(x)))
    outs, bias = [x], None
    for layer in t.layers:
        x, bias = layer(x, None, position_bias=bias, key_padding_mask=padding)
        outs.append(x)
    return outs


@pytest.mark.parametrize("with_padding", [False, True])
def test_torchaudio_parity(with_padding):
    cfg = dataclasses.replace(TINY, model_dim=48, num_heads=4, ffn_dim=96, num_layers=3,
                              conv_pos_kernel=8, conv_pos_groups=4)
    torch.manual_seed(1)
    ta = torchaudio_encoder(cfg)
    ours = make(cfg)
    load_torchaudio_weights(ours, ta)
    x = torch.randn(3, 150, cfg.model_dim)
    lengths = torch.tensor([150, 97, 40]) if with_padding else torch.full((3,), 150)
    padding = torch.arange(150)[None] >= lengths[:, None]
    x = x.masked_fill(padding[..., None], 0.0)
    with torch.no_grad():
        ref = torchaudio_layers(ta, x, padding if with_padding else None)
        got = ours.encode_sequence(x, lengths, output_hidden_states=True).layer_outputs
    for r, g in zip(ref, got):
        diff = (r - g).masked_fill(padding[..., None], 0.0).abs().max().item()
        assert diff <= 1e-5, diff


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

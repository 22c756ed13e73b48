"""Our encoder against WavLM's public implementations, through their own unmodified
forwards (hooks only observe), with padding and the conv positional embedding included.

Both are WavLM's pre-LN encoder (fairseq/unilm `layer_norm_first=True`): x + pos_conv(x)
-> pre-LN blocks -> final LayerNorm, and our default (`model.pos_conv_layer_norm: false`)
must match each at every layer and at the output:

* transformers' `WavLMEncoderStableLayerNorm.forward`, with its padding mask;
* torchaudio's WavLM `Transformer` as `_get_wavlm_encoder(layer_norm_first=True)` builds it
  (it hands the Transformer `layer_norm_first=False`, so its one LayerNorm is the final
  one): `forward` and `get_intermediate_outputs`. Its WavLM attention takes no padding
  mask through `Transformer.forward` (it asserts attention_mask is None), so padding is
  checked there by running each row alone against our padded batch.

`pos_conv_layer_norm: true` (the LayerNorm after the conv that wavlm_ds had before) must
differ from both: the tests can fail.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from wavlm_ds.model import WavLMEncoder
from wavlm_ds.presets import get_preset

CFG = dataclasses.replace(get_preset("debug"), dropout=0.0, attention_dropout=0.0, layerdrop=0.0,
                          attention_impl="reference", model_dim=48, num_heads=4, ffn_dim=96,
                          num_layers=3, conv_pos_kernel=8, conv_pos_groups=4)
LENGTHS = torch.tensor([150, 97, 40])  # 150 frames: log-spaced buckets (exact up to 80) used
TOL = 1e-5  # fp32, max abs over valid frames


def block_weights(layers, qkv, gate, norms, ffn) -> dict[str, torch.Tensor]:
    """Our block parameter names from an oracle's layers; the callables pick its tensors."""
    sd = {}
    for i, layer in enumerate(layers):
        p = f"blocks.{i}."
        (qw, qb), (ow, ob) = qkv(layer)
        (gw, gb, gc), ((n1w, n1b), (n2w, n2b)) = gate(layer), norms(layer)
        (iw, ib), (fw, fb) = ffn(layer)
        sd.update({p + "attention.qkv.weight": qw, p + "attention.qkv.bias": qb,
                   p + "attention.out_proj.weight": ow, p + "attention.out_proj.bias": ob,
                   p + "attention.gate_linear.weight": gw, p + "attention.gate_linear.bias": gb,
                   p + "attention.gate_const": gc.reshape(-1),
                   p + "attn_norm.weight": n1w, p + "attn_norm.bias": n1b,
                   p + "ffn_norm.weight": n2w, p + "ffn_norm.bias": n2b,
                   p + "ffn_in.weight": iw, p + "ffn_in.bias": ib,
                   p + "ffn_out.weight": fw, p + "ffn_out.bias": fb})
    return sd


def pos_conv_weights(conv) -> dict[str, torch.Tensor]:
    w = conv.parametrizations.weight
    return {"pos_conv.conv.bias": conv.bias,
            "pos_conv.conv.parametrizations.weight.original0": w.original0,
            "pos_conv.conv.parametrizations.weight.original1": w.original1}


def load(ours: WavLMEncoder, sd: dict[str, torch.Tensor], unset: tuple[str, ...]) -> None:
    missing, unexpected = ours.load_state_dict({k: v.detach().clone() for k, v in sd.items()},
                                               strict=False)
    assert not unexpected and all(k.startswith(unset) for k in missing), (missing, unexpected)


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial values everywhere (LayerNorm gains, gate constants): nothing hides."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(3, 150, CFG.model_dim, generator=torch.Generator().manual_seed(1))
    padding = torch.arange(150)[None] >= LENGTHS[:, None]
    return x.masked_fill(padding[..., None], 0.0), padding


def max_diff(a: torch.Tensor, b: torch.Tensor, padding: torch.Tensor) -> float:
    return (a - b).masked_fill(padding[..., None], 0.0).abs().max().item()


def hf_encoder():
    transformers = pytest.importorskip("transformers")
    from transformers.models.wavlm.modeling_wavlm import WavLMEncoderStableLayerNorm
    config = transformers.WavLMConfig(
        hidden_size=CFG.model_dim, num_hidden_layers=CFG.num_layers,
        num_attention_heads=CFG.num_heads, intermediate_size=CFG.ffn_dim, hidden_act="gelu",
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0,
        num_conv_pos_embeddings=CFG.conv_pos_kernel,
        num_conv_pos_embedding_groups=CFG.conv_pos_groups, num_buckets=CFG.num_buckets,
        max_bucket_distance=CFG.max_distance, do_stable_layer_norm=True, layer_norm_eps=1e-5)
    torch.manual_seed(2)
    hf = WavLMEncoderStableLayerNorm(config).eval()
    randomize(hf, 3)
    return hf


# Gate, norms and FFN carry the same attribute names in transformers' and torchaudio's WavLM.
SHARED_LAYER_PARTS = (
    lambda l: (l.attention.gru_rel_pos_linear.weight, l.attention.gru_rel_pos_linear.bias,
               l.attention.gru_rel_pos_const),
    lambda l: ((l.layer_norm.weight, l.layer_norm.bias),
               (l.final_layer_norm.weight, l.final_layer_norm.bias)),
    lambda l: ((l.feed_forward.intermediate_dense.weight, l.feed_forward.intermediate_dense.bias),
               (l.feed_forward.output_dense.weight, l.feed_forward.output_dense.bias)))


def hf_weights(hf) -> dict[str, torch.Tensor]:
    def qkv(layer):
        a = layer.attention
        return ((torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                 torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])),
                (a.out_proj.weight, a.out_proj.bias))

    sd = block_weights(
        hf.layers, qkv,
        *SHARED_LAYER_PARTS)
    sd.update(pos_conv_weights(hf.pos_conv_embed.conv))
    sd.update({"rel_pos.embedding.weight": hf.layers[0].attention.rel_attn_embed.weight,
               "final_norm.weight": hf.layer_norm.weight, "final_norm.bias": hf.layer_norm.bias})
    return sd


def hf_forward(hf, x: torch.Tensor, padding: torch.Tensor | None) -> list[torch.Tensor]:
    """[block input, each layer's output, last_hidden_state] from hf's own forward."""
    seen: list[torch.Tensor] = []
    hooks = [hf.layers[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))]
    hooks += [layer.register_forward_hook(lambda m, args, out: seen.append(out[0].clone()))
              for layer in hf.layers]
    mask = None if padding is None else ~padding
    with torch.no_grad():
        last = hf(x.clone(), attention_mask=mask).last_hidden_state  # it zeroes padding in place
    for h in hooks:
        h.remove()
    return seen + [last]


# transformers' WavLM passes a bool key_padding_mask with its float position bias to
# F.multi_head_attention_forward (its code, not ours), which torch flags as deprecated.
@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")
@pytest.mark.parametrize("with_padding", [False, True])
def test_matches_transformers_wavlm_encoder(with_padding):
    hf = hf_encoder()
    torch.manual_seed(0)
    ours = WavLMEncoder(CFG).eval()
    load(ours, hf_weights(hf), unset=("frontend.",))
    x, padding = inputs()
    lengths = LENGTHS if with_padding else torch.full((3,), 150)
    if not with_padding:
        padding = torch.zeros_like(padding)
    ref = hf_forward(hf, x, padding if with_padding else None)
    with torch.no_grad():
        out = ours.encode_sequence(x, lengths, output_hidden_states=True)
    got = out.layer_outputs + [out.hidden]
    assert len(got) == len(ref) == CFG.num_layers + 2
    for r, g in zip(ref, got):
        assert max_diff(r, g, padding) <= TOL

    # the switch is not a no-op: the old extra LayerNorm is a different function
    legacy = WavLMEncoder(dataclasses.replace(CFG, pos_conv_layer_norm=True)).eval()
    load(legacy, hf_weights(hf), unset=("frontend.", "pos_norm."))
    with torch.no_grad():
        assert max_diff(legacy.encode_sequence(x, lengths).hidden, ref[-1], padding) > 1e-2


def torchaudio_transformer():
    from torchaudio.models.wav2vec2.components import _get_wavlm_encoder
    torch.manual_seed(4)
    ta = _get_wavlm_encoder(
        in_features=CFG.model_dim, embed_dim=CFG.model_dim, dropout_input=0.0,
        pos_conv_kernel=CFG.conv_pos_kernel, pos_conv_groups=CFG.conv_pos_groups,
        num_layers=CFG.num_layers, num_heads=CFG.num_heads, num_buckets=CFG.num_buckets,
        max_distance=CFG.max_distance, attention_dropout=0.0, ff_interm_features=CFG.ffn_dim,
        ff_interm_dropout=0.0, dropout=0.0, layer_norm_first=True, layer_drop=0.0).eval()
    randomize(ta, 5)
    return ta.transformer


def torchaudio_weights(t) -> dict[str, torch.Tensor]:
    sd = block_weights(
        t.layers,
        lambda l: ((l.attention.attention.in_proj_weight, l.attention.attention.in_proj_bias),
                   (l.attention.attention.out_proj.weight, l.attention.attention.out_proj.bias)),
        *SHARED_LAYER_PARTS)
    sd.update(pos_conv_weights(t.pos_conv_embed.conv))
    sd.update({"rel_pos.embedding.weight": t.layers[0].attention.rel_attn_embed.weight,
               "final_norm.weight": t.layer_norm.weight, "final_norm.bias": t.layer_norm.bias})
    return sd


def test_matches_torchaudio_wavlm_transformer():
    t = torchaudio_transformer()
    assert not t.layer_norm_first  # torchaudio's pre-LN WavLM: the LayerNorm is the final one
    torch.manual_seed(0)
    ours = WavLMEncoder(CFG).eval()
    load(ours, torchaudio_weights(t), unset=("frontend.",))
    x, padding = inputs()
    full, no_padding = torch.full((3,), 150), torch.zeros_like(padding)
    with torch.no_grad():
        out = ours.encode_sequence(x, full, output_hidden_states=True)
        assert max_diff(t(x), out.hidden, no_padding) <= TOL
        layers = t.get_intermediate_outputs(x)
        assert len(layers) == len(out.layer_outputs) - 1 == CFG.num_layers
        for r, g in zip(layers, out.layer_outputs[1:]):
            assert max_diff(r, g, no_padding) <= TOL
        # padding: each row alone through torchaudio's forward = our padded batch
        batch = ours.encode_sequence(x, LENGTHS).hidden
        for b, n in enumerate(LENGTHS.tolist()):
            alone = t(x[b:b + 1, :n])[0]
            assert (alone - batch[b, :n]).abs().max().item() <= TOL
        assert (batch[2, 40:] == 0).all()  # padded encoder frames are zero
    legacy = WavLMEncoder(dataclasses.replace(CFG, pos_conv_layer_norm=True)).eval()
    load(legacy, torchaudio_weights(t), unset=("frontend.", "pos_norm."))
    with torch.no_grad():
        assert max_diff(t(x), legacy.encode_sequence(x, full).hidden, no_padding) > 1e-2


def test_old_weights_with_pos_norm_name_the_switch():
    old = WavLMEncoder(dataclasses.replace(CFG, pos_conv_layer_norm=True)).state_dict()
    with pytest.raises(ValueError, match="pos_conv_layer_norm: true"):
        WavLMEncoder(CFG).load_state_dict(old)
    WavLMEncoder(dataclasses.replace(CFG, pos_conv_layer_norm=True)).load_state_dict(old)

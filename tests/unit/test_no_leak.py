"""No masked content reaches the model: a test from the waveform, through the real
`engine.prepare_micro` and encoder, for all three objectives, with mixing on and off.

Pick the masks, then change one row's audio only in the samples that no unmasked frame's
25 ms window reads (`window_samples`, reflection at the row's ends included): every layer
output of that row must stay bit-identical. The control changes audio under one unmasked
frame: the output must change. Channels a masked sample could take, and how each is shut:

* normalization: the input's per-bin mean and variance come from the unmasked valid frames
  only (the targets keep the full-segment statistics; they are not input);
* mixing: the gain comes from the primary's power over the samples unmasked frames read;
  the interferer is another row's (or a noise) crop, whose choice, offset and SNR are drawn
  from the generator and never from audio values. The changed row's audio may legitimately
  reach *other* rows as their interferer, so only the changed row is checked;
* padding: samples past a row's length never reach its frames (per-row reflection), and
  padded frames are 0 before the front end;
* the log floor: elementwise per frame and bin, so it cannot carry anything across frames;
* the conv positional embedding and attention: they run on encoder frames after the front
  end has replaced every masked input frame with the learned mask embedding;
* batch-level: the mask depends only on the frame counts and the generator, there is no
  batch statistic (no BatchNorm), and every op is row-independent.
"""
from __future__ import annotations

import pytest
import torch

from wavlm_ds import engine as E
from wavlm_ds.config import (DataConfig, MaskingConfig, ModelConfig, ObjectiveConfig,
                             RunConfig)
from wavlm_ds.data.augment import mix_utterances
from wavlm_ds.model.frontend import encoder_lengths
from wavlm_ds.ops.logmel import HOP, normalize_per_segment, window_samples

ROW = 1  # the row whose masked audio is changed
LENGTHS = [24000, 20800, 17123]  # 1.5 s, 1.3 s, an odd length: padding on two rows


def run_config(objective: str, mix_prob: float) -> RunConfig:
    model = ModelConfig(dropout=0.0, attention_dropout=0.0, layerdrop=0.0,
                        attention_impl="reference")
    obj = ObjectiveConfig(name=objective, codebook_size=64, num_classes=20)
    return RunConfig(model=model, data=DataConfig(mix_prob=mix_prob), masking=MaskingConfig(),
                     objective=obj)


def speechlike(lengths: list[int], seed: int) -> torch.Tensor:
    """(B, max(lengths)) fp32: noise under a syllable-rate envelope with near-silent gaps."""
    gen = torch.Generator().manual_seed(seed)
    S = max(lengths)
    t = torch.arange(S) / 16000.0
    envelope = torch.sin(2 * torch.pi * 4.0 * t).clamp(min=0.0) + 1e-3
    audio = 0.3 * torch.randn(len(lengths), S, generator=gen) * envelope
    return audio * (torch.arange(S)[None] < torch.tensor(lengths)[:, None])


def make_batch(audio: torch.Tensor, cfg: RunConfig) -> dict:
    lengths = torch.tensor(LENGTHS)
    batch = {"audio": audio, "lengths": lengths, "valid": torch.ones(len(LENGTHS), dtype=torch.bool)}
    if cfg.objective.name == "kmeans":
        T_enc = int(encoder_lengths(1 + lengths // HOP, cfg.model.frame_stack).max())
        batch["labels"] = torch.randint(0, cfg.objective.num_classes, (len(LENGTHS), T_enc),
                                        generator=torch.Generator().manual_seed(5))
    return batch


def forward(cfg: RunConfig, audio: torch.Tensor, noise: dict) -> tuple[E.MicroBatch, list]:
    """prepare_micro + the objective's full forward; returns the micro-batch and the
    encoder's layer outputs (block input, each block, final LayerNorm)."""
    mb = E.prepare_micro(make_batch(audio, cfg), cfg, torch.device("cpu"), step=7, micro=1,
                         rank=0, train=True, noise=noise)
    torch.manual_seed(0)
    model = E.build_model(cfg).eval()
    with torch.no_grad():
        loss, _ = model(mb.features, mb.targets, mb.frame_lengths, mb.mask, extras=mb.extras)
        out = model.encoder(mb.features, mb.frame_lengths, mb.mask, output_hidden_states=True)
    assert torch.isfinite(loss)
    return mb, out.layer_outputs + [out.hidden]


def unseen_samples(mb: E.MicroBatch) -> torch.Tensor:
    """(B, S) bool: valid samples that no unmasked frame's window reads."""
    T = mb.mask.shape[1]
    visible = (torch.arange(T) < mb.frame_lengths[:, None]) & ~mb.mask
    lengths = torch.tensor(LENGTHS)
    S = max(LENGTHS)
    valid = torch.arange(S)[None] < lengths[:, None]
    return valid & ~window_samples(visible, lengths, S)


@pytest.mark.parametrize("mix_prob", [0.0, 1.0])
@pytest.mark.parametrize("objective", ["reconstruction", "best_rq", "kmeans"])
def test_masked_audio_never_reaches_the_model(objective, mix_prob):
    cfg = run_config(objective, mix_prob)
    audio = speechlike(LENGTHS, seed=0)
    noise = {"audio": speechlike([16000, 9000], seed=9), "lengths": torch.tensor([16000, 9000])}
    mb, outs = forward(cfg, audio, noise)
    hidden = unseen_samples(mb)[ROW]
    assert hidden.float().mean() > 0.3, "the masks should leave many samples unread"

    changed = audio.clone()
    gen = torch.Generator().manual_seed(1)
    changed[ROW] = torch.where(hidden, 0.9 * torch.randn(audio.shape[1], generator=gen), audio[ROW])
    mb2, outs2 = forward(cfg, changed, noise)
    assert torch.equal(mb.mask, mb2.mask)
    assert not torch.equal(mb.targets[ROW], mb2.targets[ROW])  # the targets did change
    assert torch.equal(mb.features[ROW], mb2.features[ROW])
    for a, b in zip(outs, outs2):
        assert torch.equal(a[ROW], b[ROW])

    # control: the same change under one unmasked frame is seen
    frame = int((~mb.mask[ROW, :mb.frame_lengths[ROW]]).nonzero()[3])
    control = audio.clone()
    start = frame * HOP - 80
    control[ROW, start:start + 160] += 0.5
    mb3, outs3 = forward(cfg, control, noise)
    assert not torch.equal(mb.features[ROW], mb3.features[ROW])
    assert all(not torch.equal(a[ROW], b[ROW]) for a, b in zip(outs[1:], outs3[1:]))


def test_mixing_gain_ignores_unread_samples():
    """The gain depends on power_samples only: louder audio elsewhere in the row keeps the
    interferer added to it identical; with WavLM's whole-utterance gain it changes."""
    cfg = DataConfig(mix_prob=1.0)
    audio = speechlike(LENGTHS, seed=2)
    lengths = torch.tensor(LENGTHS)
    power = torch.zeros_like(audio, dtype=torch.bool)
    power[:, 4000:12000] = True
    louder = audio.clone()
    louder[ROW] = torch.where(power[ROW], audio[ROW], 5 * audio[ROW])

    def added(x: torch.Tensor, samples: torch.Tensor | None) -> torch.Tensor:
        gen = torch.Generator().manual_seed(3)
        return (mix_utterances(x, lengths, gen, cfg, power_samples=samples) - x)[ROW]

    assert added(audio, power).abs().sum() > 0
    # (x + c) - x rounds differently where x differs: equal up to float rounding of x
    assert torch.allclose(added(audio, power), added(louder, power), rtol=0, atol=1e-6)
    assert not torch.allclose(added(audio, None), added(louder, None), rtol=0, atol=1e-3)


def test_feature_normalization_uses_only_included_frames():
    feats = torch.randn(2, 30, 80) * 3 + 1
    lengths = torch.tensor([30, 22])
    include = torch.zeros(2, 30, dtype=torch.bool)
    include[0, 5:20], include[1, 0:10] = True, True
    out = normalize_per_segment(feats, lengths, include)
    changed = torch.where(include[..., None], feats, torch.randn_like(feats) * 50)
    assert torch.equal(out, normalize_per_segment(changed, lengths, include))
    assert (out[~include] == 0).all()
    kept = out[0, 5:20]
    assert torch.allclose(kept.mean(0), torch.zeros(80), atol=1e-5)
    assert torch.allclose(kept.var(0, unbiased=False), torch.ones(80), atol=1e-3)
    # default: all valid frames, as before (targets and frozen-upstream features)
    full = normalize_per_segment(feats, lengths)
    assert torch.allclose(full[1, :22].mean(0), torch.zeros(80), atol=1e-5)
    assert (full[1, 22:] == 0).all()

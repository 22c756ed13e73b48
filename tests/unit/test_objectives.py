"""Objectives: reconstruction loss and baselines, BEST-RQ targets, k-means labels."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from wavlm_ds.config import ObjectiveConfig
from wavlm_ds.model import WavLMEncoder
from wavlm_ds.objectives import PretrainModel, build_objective
from wavlm_ds.objectives.reconstruction import baseline_loss_sums, interpolation_prediction
from wavlm_ds.ops.span_mask import span_mask
from wavlm_ds.presets import debug

CFG = dataclasses.replace(debug(), dropout=0.0, layerdrop=0.0, attention_dropout=0.0)


def batch(B=2, T=60):
    feats = torch.randn(B, T, 80, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([T, T - 17])
    mask = span_mask(lengths, T, generator=torch.Generator().manual_seed(1))
    return feats, lengths, mask


def test_interpolation_is_exact_on_linear_signals():
    T = 30
    ramp = torch.arange(T, dtype=torch.float32)[None, :, None].expand(1, T, 80)
    mask = torch.zeros(1, T, dtype=torch.bool)
    mask[0, 5:15] = True
    pred = interpolation_prediction(ramp, mask, torch.tensor([T]))
    assert torch.allclose(pred[0, 5:15], ramp[0, 5:15])
    mask[0, :3] = True  # leading edge holds the first visible frame
    pred = interpolation_prediction(ramp, mask, torch.tensor([T]))
    assert torch.allclose(pred[0, :3], ramp[0, 3:4].expand(3, 80))


def test_reconstruction_loss_counts_only_masked_frames():
    feats, lengths, mask = batch()
    model = PretrainModel(WavLMEncoder(CFG), build_objective(CFG, ObjectiveConfig(), 0)).eval()
    loss, _ = model(feats, feats, lengths, mask)
    # Targets outside the mask do not matter: the loss is over masked frames only.
    off_mask = torch.where(mask[..., None], feats, feats + 5.0)
    loss_off, _ = model(feats, off_mask, lengths, mask)
    assert torch.equal(loss, loss_off)
    assert model.objective.count(mask) == mask.sum()
    assert torch.isfinite(loss) and loss > 0
    base = baseline_loss_sums(feats, mask, lengths, "l1")
    assert base["baseline_zero"] > 0 and base["baseline_interp"] > 0
    assert "baseline_interp_input" not in base


def test_input_interpolation_reads_the_input_and_scores_against_the_targets():
    feats, lengths, mask = batch()
    same = baseline_loss_sums(feats, mask, lengths, "l1", inputs=feats)
    assert torch.equal(same["baseline_interp_input"], same["baseline_interp"])
    # An input normalized differently (its mean shifted) interpolates to shifted values,
    # scored against the unshifted targets.
    shifted = baseline_loss_sums(feats, mask, lengths, "l1", inputs=feats + 0.5)
    interp = interpolation_prediction(feats, mask, lengths)
    want = ((interp + 0.5 - feats).abs().mean(-1) * mask).sum()
    assert torch.allclose(shifted["baseline_interp_input"], want)
    assert shifted["baseline_interp_input"] > same["baseline_interp"]


def test_best_rq_targets_are_seeded_and_saved():
    cfg = ObjectiveConfig(name="best_rq", codebook_size=64, codebook_dim=8, num_codebooks=2)
    a, b = build_objective(CFG, cfg, 7), build_objective(CFG, cfg, 7)
    feats, lengths, mask = batch()
    assert torch.equal(a.targets(feats), b.targets(feats))  # same seed on every rank
    assert not torch.equal(a.codebook, build_objective(CFG, cfg, 8).codebook)
    assert {"projection", "codebook"} <= set(a.state_dict())  # checkpoints carry them
    model = PretrainModel(WavLMEncoder(CFG), a)
    loss, stats = model(feats, feats, lengths, mask)
    loss.backward()
    assert torch.isfinite(loss) and 0 <= stats["accuracy"] <= a.count(mask)
    with pytest.raises(ValueError, match="codebook_size"):
        build_objective(CFG, ObjectiveConfig(name="best_rq", codebook_size=1), 0)


def test_kmeans_objective_needs_aligned_labels():
    obj = build_objective(CFG, ObjectiveConfig(name="kmeans", num_classes=10), 0)
    model = PretrainModel(WavLMEncoder(CFG), obj)
    feats, lengths, mask = batch()
    labels = torch.randint(0, 10, (2, 30))
    labels[1, 22:] = -1  # padding
    loss, stats = model(feats, feats, lengths, mask, extras={"labels": labels})
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="labels shape"):
        model(feats, feats, lengths, mask, extras={"labels": labels[:, :20]})
    with pytest.raises(ValueError, match="needs labels"):
        model(feats, feats, lengths, mask)

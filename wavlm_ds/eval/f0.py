"""Frame-level F0 probe: log-F0 regression + a voicing (V/UV) head on frozen layers.

Definitions (all on the probe's frame grid, see pitch.py):
- F0-RMSE (Hz and cents) is over *reference-voiced* frames, using the predicted F0 of the
  regression head whatever the voicing head says, so the pitch error and the voicing error
  are separate numbers that do not hide each other.
- V/UV error: fraction of all frames where the voicing head (logit > 0) disagrees with the
  reference.
- GPE (gross pitch error): fraction of reference-voiced frames off by more than 20 %.
The regression target is log2(F0), standardized with the training split's voiced frames;
the loss is BCE(voicing) over all frames + MSE(log-F0) over reference-voiced frames.
A constant predictor (training mean log-F0, majority voicing class) is reported beside it,
as the floor that says whether the probe learned anything.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wavlm_ds.eval import EvalError
from wavlm_ds.eval.metrics import bootstrap_ratio
from wavlm_ds.eval.pitch import SR, TrackerConfig, cents, reference_f0
from wavlm_ds.eval.probe import ProbeSettings, build_probe, predict, train_probe
from wavlm_ds.eval.upstream import HOP_S, Features, first_center_s, num_frames

GPE_THRESHOLD = 0.2


def references(audios: Sequence[np.ndarray], stack: int, logmel_mode: str, cfg: TrackerConfig,
               desc: str) -> list[np.ndarray]:
    """Praat F0 (Hz, 0 = unvoiced) per utterance, one value per probe frame.

    The grid depends only on the audio length and the stack, so one reference serves the
    encoder and the log-Mel baseline alike.
    """
    offset = first_center_s(logmel_mode)
    return [reference_f0(a, num_frames(a.size, stack, logmel_mode), HOP_S, stack, cfg, SR, offset)
            for a in tqdm(audios, desc=desc, unit="utt", leave=False)]


def _check_aligned(feats: Features, refs: Sequence[np.ndarray]) -> None:
    for key, x, r in zip(feats.keys, feats.layers, refs):
        if int(x.shape[1]) != r.size:
            raise EvalError(f"{feats.name}: utterance {key} has {x.shape[1]} feature frames but "
                            f"{r.size} reference F0 frames (stack {feats.stack})")


@dataclass
class F0Counts:
    """Per-utterance sums, so that every metric is a ratio of sums (bootstrap-ready)."""

    sq_hz: np.ndarray
    sq_cents: np.ndarray
    gross: np.ndarray
    voiced: np.ndarray  # reference-voiced frames
    vuv_errors: np.ndarray
    frames: np.ndarray

    @classmethod
    def of(cls, preds: Sequence[np.ndarray], pred_voiced: Sequence[np.ndarray],
           refs: Sequence[np.ndarray]) -> "F0Counts":
        rows = []
        for p, pv, r in zip(preds, pred_voiced, refs):
            v = r > 0
            c = cents(p[v], r[v]) if v.any() else np.zeros(0)
            rows.append((np.sum((p[v] - r[v]) ** 2), np.sum(c ** 2),
                         np.sum(np.abs(p[v] - r[v]) > GPE_THRESHOLD * r[v]), v.sum(),
                         np.sum(pv != v), r.size))
        return cls(*[np.asarray(col, np.float64) for col in zip(*rows)])

    def metrics(self, resamples: int, seed: int, what: str) -> dict[str, dict]:
        if self.voiced.sum() == 0:
            raise EvalError(f"{what}: Praat found no voiced frame in any of the "
                            f"{self.frames.size} test utterances, so F0-RMSE is undefined; "
                            "is the audio speech (or too quiet / unvoiced only)?")
        kw = dict(resamples=resamples, seed=seed)
        return {
            "f0_rmse_hz": bootstrap_ratio(self.sq_hz, self.voiced, transform=np.sqrt,
                                          what=f"{what} F0-RMSE", **kw).as_dict(),
            "f0_rmse_cents": bootstrap_ratio(self.sq_cents, self.voiced, transform=np.sqrt,
                                             what=f"{what} F0-RMSE", **kw).as_dict(),
            "gpe": bootstrap_ratio(self.gross, self.voiced, what=f"{what} GPE", **kw).as_dict(),
            "vuv_error": bootstrap_ratio(self.vuv_errors, self.frames, what=f"{what} V/UV",
                                         **kw).as_dict()}


@dataclass
class F0Result:
    probe: F0Counts
    constant: F0Counts  # training-mean F0, majority voicing
    layer_weights: list[float]
    train_curve: list[float]
    log2_mean: float
    log2_std: float
    train_voiced_fraction: float


def _log2_stats(refs: Sequence[np.ndarray]) -> tuple[float, float, float]:
    voiced = np.concatenate([r[r > 0] for r in refs]) if refs else np.zeros(0)
    frames = sum(r.size for r in refs)
    if voiced.size == 0:
        raise EvalError(f"training split: Praat found no voiced frame in {len(refs)} utterances "
                        f"({frames} frames); the F0 probe cannot be trained on unvoiced-only audio")
    logf = np.log2(voiced)
    return float(logf.mean()), float(max(logf.std(), 1e-3)), voiced.size / max(frames, 1)


def run_f0(train: Features, train_refs: Sequence[np.ndarray], test: Features,
           test_refs: Sequence[np.ndarray], settings: ProbeSettings) -> F0Result:
    """Train the F0 + voicing probe on `train`, predict `test`, count errors per utterance."""
    _check_aligned(train, train_refs)
    _check_aligned(test, test_refs)
    mean, std, voiced_frac = _log2_stats(train_refs)
    targets = [torch.from_numpy(np.where(r > 0, (np.log2(np.maximum(r, 1.0)) - mean) / std, 0.0)
                                ).float() for r in train_refs]
    voiced = [torch.from_numpy(r > 0) for r in train_refs]

    def loss_fn(out: torch.Tensor, lengths: torch.Tensor, idx: list[int]) -> torch.Tensor:
        T = out.shape[1]
        valid = torch.arange(T)[None, :] < lengths[:, None]  # (B, T)
        tgt = torch.stack([F.pad(targets[i], (0, T - targets[i].numel())) for i in idx])
        v = torch.stack([F.pad(voiced[i], (0, T - voiced[i].numel())) for i in idx])
        bce = F.binary_cross_entropy_with_logits(out[..., 1][valid], v[valid].float())
        # Batches without a voiced frame add no regression term (never divide by zero).
        mse = ((out[..., 0] - tgt) ** 2)[v].sum() / v.sum().clamp_min(1)
        return bce + mse

    probe = build_probe(train.layers, 2, settings)
    curve = train_probe(probe, train.layers, loss_fn, settings, desc=f"f0 probe [{train.name}]")
    outs = [o.numpy().astype(np.float64) for o in predict(probe, test.layers, settings.batch_size)]
    preds = [2.0 ** (o[:, 0] * std + mean) for o in outs]
    const = [np.full(r.size, 2.0 ** mean) for r in test_refs]
    majority = [np.full(r.size, voiced_frac >= 0.5) for r in test_refs]
    return F0Result(F0Counts.of(preds, [o[:, 1] > 0 for o in outs], test_refs),
                    F0Counts.of(const, majority, test_refs), probe.mix.weights(), curve,
                    mean, std, voiced_frac)

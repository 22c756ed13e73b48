"""Masked reconstruction, the source document's objective, and its two reference baselines.

Each encoder frame t covers input frames [t*s, (t+1)*s) (s = model.frame_stack); its head
predicts those s x 80 normalized log-Mel values. The loss is taken per input frame and
only on masked ones, so the target is never visible to the encoder (masking happens on the
input frames, before the front end).
"""
from __future__ import annotations

import torch
from torch import nn

from wavlm_ds.config import ModelConfig, ObjectiveConfig
from wavlm_ds.model import EncoderOutput
from wavlm_ds.objectives.base import Objective, ObjectiveOutput


def frame_error(pred: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-input-frame error (B, T_in): mean over the mel bins of |d| or d^2."""
    diff = pred - targets
    return (diff.abs() if loss == "l1" else diff.square()).mean(dim=-1)


class MaskedReconstruction(Objective):
    def __init__(self, model_cfg: ModelConfig, cfg: ObjectiveConfig) -> None:
        super().__init__()
        self.loss = cfg.loss
        self.stride = model_cfg.frame_stack
        self.num_bins = model_cfg.num_mel_bins
        self.head = nn.Linear(model_cfg.model_dim, self.stride * self.num_bins)
        nn.init.normal_(self.head.weight, std=model_cfg.init_std)
        nn.init.zeros_(self.head.bias)

    def predict(self, enc_out: EncoderOutput, num_input_frames: int) -> torch.Tensor:
        """(B, T_in, 80) fp32 prediction of every input frame."""
        B, T_enc, _ = enc_out.hidden.shape
        pred = self.head(enc_out.hidden).float()  # (B, T_enc, s*80)
        pred = pred.view(B, T_enc * self.stride, self.num_bins)  # (B, T_enc*s, 80)
        return pred[:, :num_input_frames]  # drop the zero-padded tail of the last frame

    def forward(self, enc_out: EncoderOutput, targets: torch.Tensor, mask: torch.Tensor,
                extras: dict[str, torch.Tensor] | None = None) -> ObjectiveOutput:
        pred = self.predict(enc_out, targets.shape[1])
        err = frame_error(pred, targets, self.loss)  # (B, T_in)
        return ObjectiveOutput(loss_sum=(err * mask.to(err.dtype)).sum())


def interpolation_prediction(targets: torch.Tensor, mask: torch.Tensor,
                             lengths: torch.Tensor) -> torch.Tensor:
    """Fill each masked span by linear interpolation between its unmasked neighbours.

    At an edge (no visible frame on one side) the single visible neighbour is held; a row
    with no visible frame predicts zero (the per-segment mean). Vectorized: previous and
    next visible indices come from cumulative max/min scans, no loop over rows.
    """
    B, T, _ = targets.shape
    pos = torch.arange(T, device=targets.device).expand(B, T)  # (B, T)
    valid = pos < lengths[:, None]
    visible = valid & ~mask
    prev_idx = torch.where(visible, pos, torch.full_like(pos, -1)).cummax(dim=1).values
    big = torch.full_like(pos, T)
    next_idx = torch.where(visible, pos, big).flip(1).cummin(dim=1).values.flip(1)
    has_prev, has_next = prev_idx >= 0, next_idx < T
    prev_val = targets.gather(1, prev_idx.clamp(min=0)[..., None].expand(-1, -1, targets.shape[2]))
    next_val = targets.gather(1, next_idx.clamp(max=T - 1)[..., None].expand(-1, -1, targets.shape[2]))
    span = (next_idx - prev_idx).clamp(min=1).to(targets.dtype)
    w = ((pos - prev_idx).to(targets.dtype) / span)[..., None]  # (B, T, 1)
    both = (prev_val * (1 - w) + next_val * w)
    pred = torch.where((has_prev & has_next)[..., None], both,
                       torch.where(has_prev[..., None], prev_val,
                                   torch.where(has_next[..., None], next_val,
                                               torch.zeros_like(targets))))
    return pred


def baseline_loss_sums(targets: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor,
                       loss: str, inputs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Summed masked losses of the trivial predictors: zero and span interpolation of the
    targets' visible frames, and (given the model's `inputs`) span interpolation of what the
    model sees.

    The first two read the targets, normalized over the whole segment: their visible frames
    carry the masked frames' share of the per-bin mean and variance, which the model's input
    (normalized over the visible frames only) does not. `baseline_interp_input` interpolates
    the input's visible frames instead: the same predictor restricted to what the model can
    know, a diagnostic next to the two baselines, never a replacement."""
    maskf = mask.to(targets.dtype)
    zero = frame_error(torch.zeros_like(targets), targets, loss)
    interp = frame_error(interpolation_prediction(targets, mask, lengths), targets, loss)
    out = {"baseline_zero": (zero * maskf).sum(), "baseline_interp": (interp * maskf).sum()}
    if inputs is not None:
        seen = frame_error(interpolation_prediction(inputs, mask, lengths), targets, loss)
        out["baseline_interp_input"] = (seen * maskf).sum()
    return out

"""Front end ("feature encoder"): masked log-Mel frames -> encoder frames of width D.

Masking happens here, on the input frames, before anything mixes frames: a masked 10 ms
log-Mel frame is replaced by the learned `mask_embedding` (80 values). Frames are then
stacked without overlap, s = `frame_stack` at a time (s = 2: 20 ms encoder frames), and
projected. So encoder frame t sees exactly input frames [t*s, (t+1)*s) and no unmasked
encoder frame can see a masked input frame; the content under a mask is never visible.

Leftover frames: the input is zero-padded to a multiple of s; the last encoder frame is
valid if any of its input frames is (encoder length = ceil(frames / s)). The
reconstruction target of encoder frame t is its s x 80 input frames; the loss is taken per
input frame, so padded input frames never count.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wavlm_ds.model.config import ModelConfig


def stack_frames(x: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, T, F) -> (B, ceil(T / stride), stride * F), zero-padding T to a multiple."""
    B, T, feat = x.shape
    pad = (-T) % stride
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
    return x.reshape(B, (T + pad) // stride, stride * feat)


def encoder_lengths(frame_lengths: torch.Tensor, stride: int) -> torch.Tensor:
    """Valid encoder frames per row: ceil(frame_lengths / stride)."""
    return torch.div(frame_lengths + stride - 1, stride, rounding_mode="floor")


class FrontEnd(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.stride = cfg.frame_stack
        self.mask_embedding = nn.Parameter(torch.empty(cfg.num_mel_bins).uniform_())
        self.proj_in = nn.Linear(cfg.frame_stack * cfg.num_mel_bins, cfg.frontend_dim)
        self.norm = nn.LayerNorm(cfg.frontend_dim)
        self.proj_out = nn.Linear(cfg.frontend_dim, cfg.model_dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, features: torch.Tensor, frame_valid: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """features (B, T_in, 80); frame_valid, mask (B, T_in) bool -> (B, T_enc, D)."""
        # torch.where, not multiplication: NaN or garbage in the padding must not survive.
        x = torch.where(frame_valid[..., None], features, torch.zeros((), dtype=features.dtype,
                                                                      device=features.device))
        if mask is not None:
            x = torch.where(mask[..., None], self.mask_embedding.to(x.dtype), x)
        x = stack_frames(x, self.stride)  # (B, T_enc, s*80)
        x = self.norm(F.gelu(self.proj_in(x)))  # (B, T_enc, frontend_dim)
        return self.dropout(self.proj_out(x))  # (B, T_enc, D)

"""The objective interface and the module DeepSpeed wraps (encoder + objective).

An objective turns the encoder output and the step's clean targets into a loss **summed**
over masked input frames, never averaged: the trainer divides by the global count of
masked frames of the whole optimizer step (all micro-batches, all ranks), so that
accumulation and data parallelism give exactly the gradient of one big batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from wavlm_ds.model import EncoderOutput, WavLMEncoder


@dataclass
class ObjectiveOutput:
    loss_sum: torch.Tensor  # () fp32, summed over masked input frames
    # () tensors, summed like the loss: the trainer logs each divided by the global count
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective(nn.Module):
    """Base class: `forward(enc_out, targets, mask, extras) -> ObjectiveOutput`.

    targets: (B, T_in, 80) fp32 normalized log-Mel of the clean audio;
    mask: (B, T_in) bool, True = masked valid input frame (padding and invalid rows False);
    extras: optional per-objective tensors (e.g. k-means labels (B, T_in)).
    """

    def forward(self, enc_out: EncoderOutput, targets: torch.Tensor, mask: torch.Tensor,
                extras: dict[str, torch.Tensor] | None = None) -> ObjectiveOutput:
        raise NotImplementedError

    counts_masked_frames = True  # count() is mask.sum(): the host may know it in advance

    def count(self, mask: torch.Tensor) -> torch.Tensor:
        """What the loss is normalized by (summed over the step's micro-batches and ranks)."""
        return mask.sum()


class PretrainModel(nn.Module):
    """What DeepSpeed wraps: the encoder plus the objective's heads and frozen state."""

    def __init__(self, encoder: WavLMEncoder, objective: Objective) -> None:
        super().__init__()
        self.encoder = encoder
        self.objective = objective

    def forward(self, features: torch.Tensor, targets: torch.Tensor, frame_lengths: torch.Tensor,
                mask: torch.Tensor, layerdrop_generator: torch.Generator | None = None,
                extras: dict[str, torch.Tensor] | None = None,
                host_frame_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        enc_out = self.encoder(features, frame_lengths, mask=mask,
                               layerdrop_generator=layerdrop_generator,
                               host_frame_lengths=host_frame_lengths)
        out = self.objective(enc_out, targets, mask, extras)
        return out.loss_sum, out.stats

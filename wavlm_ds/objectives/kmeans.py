"""HuBERT/WavLM-style targets: cross-entropy on k-means cluster labels of masked frames.

Labels come from `tools/kmeans_labels.py` as one int16 label per encoder frame (20 ms by
default), carried by the data pipeline as `extras["labels"]` (B, T_enc) int64 with -1 on
padding. An encoder frame counts as masked when any of its input frames is masked, as in
BEST-RQ.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wavlm_ds.config import ModelConfig, ObjectiveConfig
from wavlm_ds.model import EncoderOutput
from wavlm_ds.objectives.base import Objective, ObjectiveOutput
from wavlm_ds.objectives.best_rq import encoder_frame_mask


class KMeansTargets(Objective):
    def __init__(self, model_cfg: ModelConfig, cfg: ObjectiveConfig) -> None:
        super().__init__()
        if cfg.num_classes < 2:
            raise ValueError(f"objective.num_classes={cfg.num_classes}: need >= 2 clusters")
        self.stride = model_cfg.frame_stack
        self.num_classes = cfg.num_classes
        self.head = nn.Linear(model_cfg.model_dim, cfg.num_classes)

    counts_masked_frames = False  # masked encoder frames: known only on the device

    def count(self, mask: torch.Tensor) -> torch.Tensor:
        return encoder_frame_mask(mask, self.stride).sum()

    def forward(self, enc_out: EncoderOutput, targets: torch.Tensor, mask: torch.Tensor,
                extras: dict[str, torch.Tensor] | None = None) -> ObjectiveOutput:
        if not extras or "labels" not in extras:
            raise ValueError("objective 'kmeans' needs labels: set data.label_member (and "
                             "data.label_sidecar_dir for sidecar shards)")
        labels = extras["labels"]  # (B, T_enc) int64, -1 = padding
        logits = self.head(enc_out.hidden).float()  # (B, T_enc, C)
        B, T_enc, C = logits.shape
        if labels.shape != (B, T_enc):
            raise ValueError(f"labels shape {tuple(labels.shape)} != encoder frames {(B, T_enc)}")
        sel = (encoder_frame_mask(mask, self.stride)[:, :T_enc] & (labels >= 0)).float()
        ce = F.cross_entropy(logits.reshape(-1, C), labels.clamp(min=0).reshape(-1),
                             reduction="none").view(B, T_enc)
        hits = (logits.argmax(-1) == labels).float()
        return ObjectiveOutput(loss_sum=(ce * sel).sum(), stats={"accuracy": (hits * sel).sum()})

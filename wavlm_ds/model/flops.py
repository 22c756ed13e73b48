"""Analytic FLOP count of the encoder (matmuls and convolutions, 2 FLOPs per MAC).

forward_flops counts what `torch.utils.flop_counter.FlopCounterMode` counts on the reference
(explicit-bias) attention path: the front end at the input frame rate folded into encoder
frames, the positional convolution, and per block the QKV/out projections, the gate linear,
attention scores and weighted sum (4 T^2 D) and the FFN. Elementwise work (softmax, bias,
norms) is not counted. Training = 3 x forward (backward = 2 x forward); activation
recomputation is deliberately not counted, so MFU does not reward recompute.
"""
from __future__ import annotations

from wavlm_ds.config import ModelConfig


def encoder_frames(num_input_frames: int, frame_stack: int) -> int:
    return -(-num_input_frames // frame_stack)


def forward_flops(cfg: ModelConfig, num_input_frames: int, batch: int = 1) -> int:
    """Forward FLOPs of the encoder for `batch` rows of `num_input_frames` (padded) frames."""
    T = encoder_frames(num_input_frames, cfg.frame_stack)
    D, Fd, K = cfg.model_dim, cfg.ffn_dim, cfg.conv_pos_kernel
    frontend = 2 * T * (cfg.frame_stack * cfg.num_mel_bins * cfg.frontend_dim
                        + cfg.frontend_dim * D)
    conv_out = T + (1 if K % 2 == 0 else 0)  # an even kernel computes one extra frame
    pos_conv = 2 * conv_out * D * (D // cfg.conv_pos_groups) * K
    per_layer = (2 * T * D * 3 * D  # QKV
                 + 2 * T * D * D  # out projection
                 + 2 * T * cfg.num_heads * cfg.head_dim * 8  # gate linear
                 + 4 * T * T * D  # scores + weighted sum
                 + 4 * T * D * Fd)  # FFN in + out
    return batch * (frontend + pos_conv + cfg.num_layers * per_layer)


def training_flops(cfg: ModelConfig, num_input_frames: int, batch: int = 1) -> int:
    return 3 * forward_flops(cfg, num_input_frames, batch)

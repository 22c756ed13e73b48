"""Analytic FLOP count of the encoder (matmuls and convolutions, 2 FLOPs per MAC).

forward_flops counts what `torch.utils.flop_counter.FlopCounterMode` counts on the reference
(explicit-bias) attention path: the front end at the input frame rate folded into encoder
frames, the positional convolution, and per block the QKV/out projections, the gate linear,
attention scores and weighted sum (4 T^2 D) and the FFN. Elementwise work (softmax, bias,
norms) is not counted. Training = 3 x forward (backward = 2 x forward); activation
recomputation is deliberately not counted, so MFU does not reward recompute.

Two figures per step (`micro_batch_flops`): **model FLOPs** count valid frames of real rows
through the layers that ran (layerdrop skips are not counted); **hardware FLOPs** count what
ran: padded frames, fill rows and the activation-checkpointing recompute. MFU is model
FLOPs / peak; HFU is hardware FLOPs / peak.
"""
from __future__ import annotations

from wavlm_ds.model.config import ModelConfig


def parameter_count(cfg: ModelConfig) -> int:
    """Parameters of `WavLMEncoder(cfg)` (front end included, objective heads not), counted
    from the shapes: equal to the module's numel (tests/unit/test_model.py, every preset)."""
    D, Fd, H = cfg.model_dim, cfg.ffn_dim, cfg.num_heads
    norm = 2 * D  # LayerNorm weight + bias
    frontend = (cfg.num_mel_bins  # mask embedding
                + cfg.frame_stack * cfg.num_mel_bins * cfg.frontend_dim + cfg.frontend_dim
                + 2 * cfg.frontend_dim  # its LayerNorm
                + cfg.frontend_dim * D + D)
    # weight norm over the kernel dim: direction v (D, D / groups, K), magnitude g (K,), bias
    pos_conv = D * (D // cfg.conv_pos_groups) * cfg.conv_pos_kernel + cfg.conv_pos_kernel + D
    block = (2 * norm + 3 * D * D + 3 * D + D * D + D  # norms, QKV, out projection
             + cfg.head_dim * 8 + 8 + H  # gate linear, gate constants
             + D * Fd + Fd + Fd * D + D)  # FFN
    return (frontend + pos_conv + (norm if cfg.pos_conv_layer_norm else 0)
            + cfg.num_buckets * H + cfg.num_layers * block + norm)


def encoder_frames(num_input_frames: int, frame_stack: int) -> int:
    return -(-num_input_frames // frame_stack)


def forward_flops(cfg: ModelConfig, num_input_frames: int, batch: int = 1,
                  num_layers: int | None = None) -> int:
    """Forward FLOPs of the encoder for `batch` rows of `num_input_frames` (padded) frames,
    running `num_layers` blocks (default all; fewer when layerdrop skipped some)."""
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
    layers = cfg.num_layers if num_layers is None else num_layers
    return batch * (frontend + pos_conv + layers * per_layer)


def training_flops(cfg: ModelConfig, num_input_frames: int, batch: int = 1) -> int:
    return 3 * forward_flops(cfg, num_input_frames, batch)


def micro_batch_flops(cfg: ModelConfig, frame_lengths: list[int], padded_frames: int,
                      num_rows: int, layers_run: int) -> tuple[int, int]:
    """(model, hardware) training FLOPs of one micro-batch.

    model: the valid frames of the real rows only (`frame_lengths`, one per valid row),
    through the layers that ran, 3 x forward: the work the data needed, what MFU means.
    hardware: every row (fill rows included) at the padded length, through the layers that
    ran, 3 x forward plus one more forward of the blocks under activation checkpointing:
    what the device executed.
    """
    model = sum(3 * forward_flops(cfg, n, 1, layers_run) for n in frame_lengths)
    padded = forward_flops(cfg, padded_frames, num_rows, layers_run)
    recompute = 0
    if cfg.activation_checkpointing:
        recompute = padded - forward_flops(cfg, padded_frames, num_rows, 0)
    return model, 3 * padded + recompute

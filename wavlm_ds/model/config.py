"""The encoder's shape and behaviour: `ModelConfig`, the run YAML's `model:` section.

It lives beside the model so that the model, the presets and the run config all import it
from here without a cycle; `wavlm_ds.config` re-exports it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from wavlm_ds.errors import require


@dataclass(frozen=True)
class ModelConfig:
    # debug | base | large | large_plus (wavlm_ds/presets.py); other keys override it
    preset: str = "debug"
    num_mel_bins: int = 80  # log-Mel bins of the input
    frame_stack: int = 2  # input frames (10 ms) per encoder frame: 2 -> 20 ms encoder frames
    frontend_dim: int = 64  # hidden width of the front end ("feature encoder")
    model_dim: int = 32  # transformer width
    num_layers: int = 2  # transformer blocks
    num_heads: int = 4  # attention heads (model_dim must divide by it)
    ffn_dim: int = 64  # FFN hidden width
    conv_pos_kernel: int = 16  # positional convolution kernel, encoder frames (WavLM: 128)
    conv_pos_groups: int = 4  # positional convolution groups (WavLM: 16)
    # A LayerNorm right after x + pos_conv(x). WavLM's pre-LN encoder (fairseq/unilm
    # layer_norm_first, torchaudio, transformers' WavLMEncoderStableLayerNorm) has none,
    # only the final one: false. true is what wavlm_ds built before this key existed (its
    # old checkpoints and exports need it to load); it is not WavLM.
    pos_conv_layer_norm: bool = False
    num_buckets: int = 320  # WavLM: 160 per direction, exact up to 80 frames
    max_distance: int = 800  # encoder frames; log-spaced buckets up to here
    dropout: float = 0.1  # residual and embedding dropout
    attention_dropout: float = 0.1  # on attention weights (reference and sdpa paths only)
    activation_dropout: float = 0.0  # inside the FFN
    layerdrop: float = 0.05  # probability of skipping a block in training (seeded per step)
    init_std: float = 0.02  # normal init of linear and embedding weights
    # auto: sdpa (or flex where tools/gpu_selftest.py proved it) on CUDA, blocked on CPU
    attention_impl: Literal["auto", "reference", "blocked", "sdpa", "flex"] = "auto"
    # Self-made CUDA fast paths (flex attention, Triton log-Mel): auto = where the self-test
    # record proved them on this GPU model, force = always (CUDA only), off = never.
    fast_paths: Literal["auto", "force", "off"] = "auto"
    selftest_record: str = ""  # default: inside the venv (wavlm_ds/ops/gpu_gate.py)
    compile: bool = False  # regional torch.compile of each transformer block
    # recompute each block in backward (saves activation memory)
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        require(self.model_dim % self.num_heads == 0, "model.model_dim",
                 f"{self.model_dim} is not divisible by model.num_heads={self.num_heads}",
                 "pick a width that is a multiple of the head count")
        require(self.model_dim % self.conv_pos_groups == 0, "model.conv_pos_groups",
                 f"{self.conv_pos_groups} does not divide model.model_dim={self.model_dim}",
                 "use a divisor of the width (WavLM uses 16)")
        require(self.num_buckets % 2 == 0 and self.num_buckets >= 4, "model.num_buckets",
                 f"{self.num_buckets} must be even and >= 4", "WavLM uses 320")
        require(self.max_distance > self.num_buckets // 4, "model.max_distance",
                 f"{self.max_distance} must exceed num_buckets/4={self.num_buckets // 4} "
                 "(the exact-bucket range)", "WavLM uses 800")
        for name in ("num_mel_bins", "frame_stack", "frontend_dim", "model_dim", "num_layers",
                     "num_heads", "ffn_dim", "conv_pos_kernel"):
            require(getattr(self, name) > 0, f"model.{name}", "must be positive", "")
        for name in ("dropout", "attention_dropout", "activation_dropout", "layerdrop"):
            value = getattr(self, name)
            require(0.0 <= value < 1.0, f"model.{name}", f"{value} is outside [0, 1)", "")
        require(self.attention_dropout == 0 or self.attention_impl not in ("blocked", "flex"),
                 "model.attention_impl",
                 f"{self.attention_impl!r} has no attention dropout, but model.attention_dropout"
                 f" = {self.attention_dropout}",
                 "set model.attention_dropout: 0.0, or model.attention_impl: sdpa (or auto)")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

"""The WavLM-style encoder: front end -> conv positional embedding -> pre-LN blocks.

Order of operations, WavLM's pre-LN encoder (fairseq/unilm `layer_norm_first=True`,
torchaudio's WavLM Transformer, transformers' `WavLMEncoderStableLayerNorm`):
x = front_end(masked features); x = x + conv_pos(x); dropout; pre-LN blocks; final
LayerNorm. Tested against torchaudio's and transformers' own forwards, with padding
(tests/unit/test_encoder_oracles.py). `model.pos_conv_layer_norm: true` adds a LayerNorm
after x + conv_pos(x): wavlm_ds had it before that key existed, and its old checkpoints and
exports need the key set to load (loading them without it is an error that says so).

Initialization: linear and embedding weights N(0, init_std), biases 0, LayerNorm 1/0; the
output projections of each block (attention out_proj, FFN out) use init_std /
sqrt(2 * num_layers) so that the residual stream's variance does not grow with depth; the
positional conv keeps torchaudio's weight-norm init; gate constants start at 1.

Padding is honoured everywhere: padded input frames are zeroed with torch.where before the
front end (NaN in padding cannot leak), padded encoder frames are zeroed before the conv and
after every block, and padded keys are excluded from attention.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from wavlm_ds.model.config import ModelConfig
from wavlm_ds.model.attention import GatedRelPosAttention, RelativePositionTable
from wavlm_ds.model.frontend import FrontEnd, encoder_lengths
from wavlm_ds.ops.attention import BlockMask, choose_impl, flex_block_mask
from wavlm_ds.ops.checks import assert_on_device


@dataclass
class EncoderOutput:
    hidden: torch.Tensor  # (B, T_enc, D) after the final LayerNorm, zero at padding
    lengths: torch.Tensor  # (B,) valid encoder frames
    padding_mask: torch.Tensor  # (B, T_enc) bool, True = padding
    layer_outputs: list[torch.Tensor] | None  # block-stack input + each block's output


class ConvPositionalEmbedding(nn.Module):
    """WavLM's grouped convolution over time (weight norm over the kernel dim, GELU).

    On CPU it always computes in fp32 (the input and the weight-normed weight cast up, the
    output cast back to the input's dtype): oneDNN's bf16 grouped conv1d on AMX CPUs returns
    wrong values (relative error 1.05-1.17 against fp32) when a group has at most 12 channels
    and the kernel is even ({4, 6, 8, 12} x {16, 32, 64} measured; the demo's 96 channels / 8
    groups, kernel 32 is in that region); it is right at 16+ channels per group (large_plus:
    64, kernel 128), with an odd kernel at 12, and with oneDNN off (SPEC.md, CPU precision
    facts, torch 2.11.0). AVX2 and AVX512-BF16 CPUs without AMX do not reproduce it. Of the
    correct options, fp32 measured fastest on CPU (`python tools/bench_ops.py --only pos_conv`,
    AMD EPYC with AVX512-BF16, no AMX, 1 thread, bf16 inputs, forward + backward; demo shape
    B 4 x T 300 x 96: fp32 12.6 ms, unfold + bmm 35.7, oneDNN off 60.3, native bf16 13.6;
    large_plus shape 1 x 800 x 1280: 1.78 s, 2.29, 22.9, native 1.02: BENCHMARKS.md).
    CUDA keeps the conv in the input's dtype (cuDNN; checked by wavlm_ds.numerics at start).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        conv = nn.Conv1d(cfg.model_dim, cfg.model_dim, cfg.conv_pos_kernel,
                         padding=cfg.conv_pos_kernel // 2, groups=cfg.conv_pos_groups)
        std = math.sqrt(4.0 / (cfg.conv_pos_kernel * cfg.model_dim))
        nn.init.normal_(conv.weight, mean=0.0, std=std)
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.num_remove = 1 if cfg.conv_pos_kernel % 2 == 0 else 0  # "same" length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # (B, D, T)
        if x.device.type == "cpu" and x.dtype != torch.float32:
            y = self._conv_fp32(x).to(x.dtype)
        else:
            y = self.conv(x)  # (B, D, T + num_remove)
        if self.num_remove:
            y = y[..., : -self.num_remove]
        return F.gelu(y).transpose(1, 2)  # (B, T, D)

    def _conv_fp32(self, x: torch.Tensor) -> torch.Tensor:
        """The conv in fp32, weight norm included (g and v cast up before they combine)."""
        conv, weight = self.conv, self.conv.parametrizations.weight
        w = torch._weight_norm(weight.original1.float(), weight.original0.float(), dim=2)
        return F.conv1d(x.float(), w, conv.bias.float(), padding=conv.padding,
                        groups=conv.groups)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.model_dim)
        self.attention = GatedRelPosAttention(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.model_dim)
        self.ffn_in = nn.Linear(cfg.model_dim, cfg.ffn_dim)
        self.ffn_out = nn.Linear(cfg.ffn_dim, cfg.model_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation_dropout = nn.Dropout(cfg.activation_dropout)

    def forward(self, x: torch.Tensor, rel_bias: torch.Tensor, key_padding_mask: torch.Tensor | None,
                block_mask: BlockMask | None = None, impl: str = "auto") -> torch.Tensor:
        x = x + self.dropout(self.attention(self.attn_norm(x), rel_bias, key_padding_mask,
                                            block_mask, impl))
        h = self.activation_dropout(F.gelu(self.ffn_in(self.ffn_norm(x))))
        return x + self.dropout(self.ffn_out(h))


class WavLMEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.frontend = FrontEnd(cfg)
        self.pos_conv = ConvPositionalEmbedding(cfg)
        self.pos_norm = nn.LayerNorm(cfg.model_dim) if cfg.pos_conv_layer_norm else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout)
        self.rel_pos = RelativePositionTable(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(cfg.model_dim)
        self.compiled = False  # set by wavlm_ds.model.compile.compile_blocks
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std, depth_std = self.cfg.init_std, self.cfg.init_std / math.sqrt(2 * self.cfg.num_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                scaled = name.endswith("attention.out_proj") or name.endswith("ffn_out")
                nn.init.normal_(module.weight, std=depth_std if scaled else std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        if not self.cfg.pos_conv_layer_norm and prefix + "pos_norm.weight" in state_dict:
            raise ValueError(
                f"the weights have {prefix}pos_norm.* (a LayerNorm after the positional conv, "
                "as wavlm_ds built it before model.pos_conv_layer_norm existed); this encoder "
                "is WavLM's, without it. To load them as trained, set model.pos_conv_layer_norm:"
                " true (run YAML or --set; for an export, in the model section of its "
                "config.json)")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, features: torch.Tensor, frame_lengths: torch.Tensor,
                mask: torch.Tensor | None = None, output_hidden_states: bool = False,
                layerdrop_generator: torch.Generator | None = None,
                host_frame_lengths: torch.Tensor | None = None,
                channel_mask: torch.Tensor | None = None) -> EncoderOutput:
        """features (B, T_in, 80), frame_lengths (B,) on the features' device;
        host_frame_lengths: the same lengths on the host, if the caller has them (the
        trainer does), so that "is anything padded?" is answered without a device sync.
        channel_mask (B, D) bool: channels of the projected frames set to zero on every
        frame (fine-tuning's channel masking, where fairseq's wav2vec 2.0 applies it)."""
        check_inputs(features, frame_lengths, mask, self.cfg.num_mel_bins)
        T_in = features.shape[1]
        frame_valid = torch.arange(T_in, device=features.device) < frame_lengths[:, None]
        if mask is not None:
            mask = mask & frame_valid
        dtype = self.frontend.proj_in.weight.dtype
        x = self.frontend(features.to(dtype), frame_valid, mask)  # (B, T_enc, D)
        if channel_mask is not None:
            x = x.masked_fill(channel_mask[:, None, :], 0.0)
        lengths = encoder_lengths(frame_lengths, self.cfg.frame_stack)
        host = None if host_frame_lengths is None else encoder_lengths(host_frame_lengths,
                                                                       self.cfg.frame_stack)
        return self.encode_sequence(x, lengths, output_hidden_states,
                                    self.layerdrop_decisions(layerdrop_generator), host)

    def attention_impl(self, device: torch.device) -> str:
        """The attention path this forward runs (`ops.attention.choose_impl`)."""
        dropout_p = self.cfg.attention_dropout if self.training else 0.0
        return choose_impl(self.cfg.attention_impl, device, dropout_p, self.compiled)

    def encode_sequence(self, x: torch.Tensor, lengths: torch.Tensor,
                        output_hidden_states: bool = False, dropped: list[bool] | None = None,
                        host_lengths: torch.Tensor | None = None) -> EncoderOutput:
        """The transformer part on projected frames x (B, T_enc, D) with valid `lengths`."""
        padding = torch.arange(x.shape[1], device=x.device) >= lengths[:, None]  # (B, T_enc)
        x = x.masked_fill(padding[..., None], 0.0)
        x = self.dropout(self.pos_norm(x + self.pos_conv(x)))
        rel_bias = self.rel_pos(x.shape[1])  # (H, 2T - 1), shared by all blocks
        impl = self.attention_impl(x.device)
        block_mask = None  # flex: one block mask per forward, shared by every layer
        if impl == "flex" and is_padded(lengths if host_lengths is None else host_lengths,
                                        x.shape[1]):
            block_mask = flex_block_mask(padding)
        return self.run_blocks(x, rel_bias, padding, lengths, output_hidden_states,
                               dropped or [False] * self.cfg.num_layers, block_mask, impl)

    def layerdrop_decisions(self, generator: torch.Generator | None) -> list[bool]:
        if not (self.training and self.cfg.layerdrop > 0):
            return [False] * self.cfg.num_layers
        if generator is None:
            raise ValueError("layerdrop > 0 in training needs layerdrop_generator (a CPU "
                             "torch.Generator seeded identically on every rank); the global "
                             "RNG would make ranks disagree and resumes diverge")
        return draw_layerdrop(self.cfg.num_layers, self.cfg.layerdrop, generator)

    def run_blocks(self, x: torch.Tensor, rel_bias: torch.Tensor, padding: torch.Tensor,
                   lengths: torch.Tensor, output_hidden_states: bool, dropped: list[bool],
                   block_mask: BlockMask | None = None, impl: str = "auto") -> EncoderOutput:
        outputs = [x] if output_hidden_states else None
        key_padding = None if impl == "flex" else padding  # flex: padding is the block mask
        for block, drop in zip(self.blocks, dropped):
            if drop:
                # Keep the skipped block's gradients defined (zeros): ZeRO-2 reduces
                # gradients in buckets that must hold the same parameters on every rank.
                x = x + 0.0 * sum(p.sum() for p in block.parameters()).to(x.dtype)
            elif self.cfg.activation_checkpointing and self.training:
                x = checkpoint(block, x, rel_bias, key_padding, block_mask, impl,
                               use_reentrant=False)
            else:
                x = block(x, rel_bias, key_padding, block_mask, impl)
            x = x.masked_fill(padding[..., None], 0.0)
            if outputs is not None:
                outputs.append(x)
        hidden = self.final_norm(x).masked_fill(padding[..., None], 0.0)
        return EncoderOutput(hidden, lengths, padding, outputs)


def draw_layerdrop(num_layers: int, p: float, generator: torch.Generator) -> list[bool]:
    """Which layers to skip: one draw per layer from a CPU generator (no device sync)."""
    return (torch.rand(num_layers, generator=generator) < p).tolist()


def is_padded(lengths: torch.Tensor, T: int) -> bool:
    """Whether any row is shorter than T. Decided on the host only: for lengths on a GPU
    the answer would cost a device sync, so it is assumed True (a block mask that masks
    nothing is still correct)."""
    if lengths.device.type != "cpu":
        return True
    return bool((lengths < T).any())


def check_inputs(features: torch.Tensor, frame_lengths: torch.Tensor, mask: torch.Tensor | None,
                 num_mel_bins: int) -> None:
    """Clear errors for malformed inputs; never a silent broadcast.

    Shape and dtype checks are free. The value check (0 < length <= T) is immediate on CPU;
    on CUDA it is an asynchronous device assert so the training step never waits on it.
    """
    if features.ndim != 3 or features.shape[-1] != num_mel_bins:
        raise ValueError(f"features: expected (B, T, {num_mel_bins}), got {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"features: expected a float dtype, got {features.dtype}")
    B, T = features.shape[:2]
    if frame_lengths.ndim != 1 or frame_lengths.shape[0] != B:
        raise ValueError(f"frame_lengths: expected shape ({B},), got {tuple(frame_lengths.shape)}")
    if frame_lengths.is_floating_point() or frame_lengths.dtype == torch.bool:
        raise ValueError(f"frame_lengths: expected an integer dtype, got {frame_lengths.dtype}")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask: expected torch.bool, got {mask.dtype}")
        if tuple(mask.shape) != (B, T):
            raise ValueError(f"mask: expected shape {(B, T)} aligned to input frames, got "
                             f"{tuple(mask.shape)}")
    ok = (frame_lengths > 0).all() & (frame_lengths <= T).all()
    assert_on_device(ok, lambda: f"frame_lengths: every value must be in [1, {T}] (the padded "
                     f"length), got {frame_lengths.tolist()}", "frame_lengths out of [1, T]")

"""WavLM-DS encoder for transformers: 16 kHz waveforms -> log-Mel -> WavLM-style encoder.

Remote code written next to the weights by `tools/export.py hf`, loaded with
`AutoModel.from_pretrained(dir, trust_remote_code=True)`. It imports only torch and
transformers (never wavlm_ds), so it runs where wavlm_ds is not installed. It mirrors
`wavlm_ds.ops.logmel` (the gathered reference path, per-segment normalization) and
`wavlm_ds.model.encoder` in eval mode; tests/unit/test_hf_export.py checks that both give
the same hidden states (fp32, <= 1e-5) on padded batches. The log-Mel window and filterbank
are stored with the weights, so no torchaudio is needed and both modes (htk, kaldi) match.

Shapes: input_values (B, S) float32 in [-1, 1] at 16 kHz; attention_mask (B, S), 1 = real
sample; outputs at the encoder frame rate (frame_stack x 10 ms): last_hidden_state
(B, T, D), hidden_states = (block-stack input, block 1 .. N-1 outputs, block N output after
the final LayerNorm), N + 1 tensors of (B, T, D), each zero at padded frames;
frame_lengths (B,) valid frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

HOP, WIN, NORM_EPS = 160, 400, 1e-5
EXPORT_FORMAT = 1  # bumped when this file's weight names or semantics change


class WavLMDSConfig(PretrainedConfig):
    model_type = "wavlm_ds"

    def __init__(self, num_mel_bins: int = 80, frame_stack: int = 2, frontend_dim: int = 64,
                 model_dim: int = 32, num_layers: int = 2, num_heads: int = 4,
                 ffn_dim: int = 64, conv_pos_kernel: int = 16, conv_pos_groups: int = 4,
                 num_buckets: int = 320, max_distance: int = 800, logmel_mode: str = "htk",
                 pos_norm: bool = True, export_format: int = EXPORT_FORMAT, **kwargs) -> None:
        if logmel_mode not in ("htk", "kaldi"):
            raise ValueError(f"config.json: logmel_mode={logmel_mode!r}; use 'htk' or 'kaldi'")
        if export_format != EXPORT_FORMAT:
            raise ValueError(f"config.json: export_format {export_format}, this code reads "
                             f"{EXPORT_FORMAT}; re-export with this wavlm_ds version's "
                             "`tools/export.py hf`")
        self.num_mel_bins, self.frame_stack, self.frontend_dim = num_mel_bins, frame_stack, frontend_dim
        self.model_dim, self.num_layers, self.num_heads, self.ffn_dim = model_dim, num_layers, num_heads, ffn_dim
        self.conv_pos_kernel, self.conv_pos_groups = conv_pos_kernel, conv_pos_groups
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.logmel_mode, self.pos_norm, self.export_format = logmel_mode, pos_norm, export_format
        self.hidden_size = model_dim
        super().__init__(**kwargs)


@dataclass
class WavLMDSOutput(BaseModelOutput):
    frame_lengths: torch.LongTensor | None = None


class LogMel(nn.Module):
    """(audio (B, S), lengths (B,)) -> normalized log-Mel (B, T_in, 80), frame_lengths (B,)."""

    def __init__(self, config: WavLMDSConfig) -> None:
        super().__init__()
        self.mode = config.logmel_mode
        self.n_fft = WIN if self.mode == "htk" else 512
        self.register_buffer("window", torch.zeros(WIN))
        self.register_buffer("mel_fb", torch.zeros(self.n_fft // 2 + 1, config.num_mel_bins))

    def num_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        if self.mode == "htk":
            return 1 + torch.div(lengths, HOP, rounding_mode="floor")
        return (1 + torch.div(lengths - WIN, HOP, rounding_mode="floor")).clamp(min=0)

    def frames(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, 400) windows; htk centres them (reflecting at each row's own end)."""
        S = audio.shape[1]
        T = 1 + S // HOP if self.mode == "htk" else 1 + (S - WIN) // HOP
        start = torch.arange(T, device=audio.device) * HOP - (WIN // 2 if self.mode == "htk" else 0)
        idx = (start[:, None] + torch.arange(WIN, device=audio.device))[None]  # (1, T, 400)
        last = (lengths - 1).clamp(min=0)[:, None, None]
        idx = idx.abs()
        idx = torch.where(idx > last, 2 * last - idx, idx).clamp(min=0)  # (B, T, 400)
        return audio.gather(1, idx.reshape(audio.shape[0], -1)).view(*idx.shape)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        frames = self.frames(audio, lengths)
        if self.mode == "kaldi":
            frames = frames - frames.mean(dim=-1, keepdim=True)  # DC offset
            prev = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
            frames = frames - 0.97 * prev  # pre-emphasis
        spec = torch.view_as_real(torch.fft.rfft(frames * self.window, n=self.n_fft))
        power = spec[..., 0] * spec[..., 0] + spec[..., 1] * spec[..., 1]
        floor = 1e-10 if self.mode == "htk" else torch.finfo(torch.float32).eps
        feats = (power @ self.mel_fb).clamp(min=floor).log()  # (B, T, 80)
        frame_lengths = self.num_frames(lengths)
        valid = (torch.arange(feats.shape[1], device=audio.device)
                 < frame_lengths[:, None]).to(feats.dtype)[..., None]  # (B, T, 1)
        count = frame_lengths.clamp(min=1).to(feats.dtype)[:, None, None]
        mean = (feats * valid).sum(1, keepdim=True) / count
        centered = feats - mean
        var = (centered.square() * valid).sum(1, keepdim=True) / count
        return centered * torch.rsqrt(var + NORM_EPS) * valid, frame_lengths


class FrontEnd(nn.Module):
    """Stack frame_stack input frames without overlap, then Linear-GELU-LayerNorm-Linear."""

    def __init__(self, c: WavLMDSConfig) -> None:
        super().__init__()
        self.stride = c.frame_stack
        self.mask_embedding = nn.Parameter(torch.zeros(c.num_mel_bins))  # pretraining only
        self.proj_in = nn.Linear(c.frame_stack * c.num_mel_bins, c.frontend_dim)
        self.norm = nn.LayerNorm(c.frontend_dim)
        self.proj_out = nn.Linear(c.frontend_dim, c.model_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        B, T, n = feats.shape
        x = F.pad(feats, (0, 0, 0, (-T) % self.stride))
        x = x.reshape(B, -1, self.stride * n)  # (B, T_enc, s*80)
        return self.proj_out(self.norm(F.gelu(self.proj_in(x))))


class ConvPositionalEmbedding(nn.Module):
    def __init__(self, c: WavLMDSConfig) -> None:
        super().__init__()
        conv = nn.Conv1d(c.model_dim, c.model_dim, c.conv_pos_kernel,
                         padding=c.conv_pos_kernel // 2, groups=c.conv_pos_groups)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.num_remove = 1 if c.conv_pos_kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)
        if x.device.type == "cpu" and x.dtype != torch.float32:
            # oneDNN's bf16 grouped conv1d is wrong on AMX CPUs at <= 12 channels per group:
            # fp32 on CPU, as wavlm_ds.model.encoder.ConvPositionalEmbedding (its docstring)
            wn = self.conv.parametrizations.weight
            w = torch._weight_norm(wn.original1.float(), wn.original0.float(), dim=2)
            y = F.conv1d(x.float(), w, self.conv.bias.float(), padding=self.conv.padding,
                         groups=self.conv.groups).to(x.dtype)
        else:
            y = self.conv(x)
        if self.num_remove:
            y = y[..., : -self.num_remove]
        return F.gelu(y).transpose(1, 2)  # (B, T, D)


def relative_position_bucket(relative: torch.Tensor, num_buckets: int, max_distance: int
                             ) -> torch.Tensor:
    half = num_buckets // 2
    buckets = (relative > 0).long() * half
    distance = relative.abs()
    max_exact = half // 2
    large = max_exact + (torch.log(distance.float().clamp(min=1) / max_exact)
                         / math.log(max_distance / max_exact) * (half - max_exact)).long()
    large = large.clamp(max=half - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class RelativePositionTable(nn.Module):
    def __init__(self, c: WavLMDSConfig) -> None:
        super().__init__()
        self.num_buckets, self.max_distance = c.num_buckets, c.max_distance
        self.embedding = nn.Embedding(c.num_buckets, c.num_heads)

    def forward(self, T: int) -> torch.Tensor:
        pos = torch.arange(T, device=self.embedding.weight.device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.num_buckets,
                                           self.max_distance)  # (T, T): j - i
        return self.embedding(buckets).permute(2, 0, 1)  # (H, T, T)


class GatedRelPosAttention(nn.Module):
    """WavLM attention with the gated relative position bias, explicit (B, H, T, T) bias."""

    def __init__(self, c: WavLMDSConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim = c.num_heads, c.model_dim // c.num_heads
        self.qkv = nn.Linear(c.model_dim, 3 * c.model_dim)
        self.out_proj = nn.Linear(c.model_dim, c.model_dim)
        self.gate_linear = nn.Linear(self.head_dim, 8)
        self.gate_const = nn.Parameter(torch.ones(c.num_heads))

    def forward(self, h: torch.Tensor, table: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        B, T, D = h.shape
        q, k, v = self.qkv(h).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        g = self.gate_linear(h.view(B, T, self.num_heads, self.head_dim))  # (B, T, H, 8)
        g = torch.sigmoid(g.view(B, T, self.num_heads, 2, 4).sum(-1))
        gate = (g[..., 0] * (g[..., 1] * self.gate_const - 1.0) + 2.0).transpose(1, 2)  # (B, H, T)
        scores = q @ k.transpose(-1, -2) * self.head_dim ** -0.5 + gate[..., None] * table[None]
        scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
        out = torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v  # (B, H, T, Dh)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))


class Block(nn.Module):
    def __init__(self, c: WavLMDSConfig) -> None:
        super().__init__()
        self.attn_norm, self.ffn_norm = nn.LayerNorm(c.model_dim), nn.LayerNorm(c.model_dim)
        self.attention = GatedRelPosAttention(c)
        self.ffn_in, self.ffn_out = nn.Linear(c.model_dim, c.ffn_dim), nn.Linear(c.ffn_dim, c.model_dim)

    def forward(self, x: torch.Tensor, table: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attn_norm(x), table, padding)
        return x + self.ffn_out(F.gelu(self.ffn_in(self.ffn_norm(x))))


class Encoder(nn.Module):
    """Front end -> x + conv_pos(x) -> [LayerNorm] -> pre-LN blocks -> final LayerNorm."""

    def __init__(self, c: WavLMDSConfig) -> None:
        super().__init__()
        self.frontend = FrontEnd(c)
        self.pos_conv = ConvPositionalEmbedding(c)
        self.pos_norm = nn.LayerNorm(c.model_dim) if c.pos_norm else nn.Identity()
        self.rel_pos = RelativePositionTable(c)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.num_layers))
        self.final_norm = nn.LayerNorm(c.model_dim)
        self.stride = c.frame_stack

    def forward(self, feats: torch.Tensor, frame_lengths: torch.Tensor
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
        lengths = torch.div(frame_lengths + self.stride - 1, self.stride, rounding_mode="floor")
        x = self.frontend(feats)  # (B, T, D)
        padding = torch.arange(x.shape[1], device=x.device) >= lengths[:, None]  # (B, T)
        x = x.masked_fill(padding[..., None], 0.0)
        # zeroing the padding here changes no valid frame (padded keys are masked out)
        x = self.pos_norm(x + self.pos_conv(x)).masked_fill(padding[..., None], 0.0)
        table = self.rel_pos(x.shape[1])
        states = [x]
        for block in self.blocks:
            x = block(x, table, padding).masked_fill(padding[..., None], 0.0)
            states.append(x)
        states[-1] = self.final_norm(x).masked_fill(padding[..., None], 0.0)
        return states, lengths


class WavLMDSModel(PreTrainedModel):
    config_class = WavLMDSConfig
    base_model_prefix = "wavlm_ds"
    main_input_name = "input_values"

    def __init__(self, config: WavLMDSConfig) -> None:
        super().__init__(config)
        self.logmel = LogMel(config)
        self.encoder = Encoder(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Weights come from the export; nothing here is meant to be trained from scratch."""

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                **kwargs) -> WavLMDSOutput | tuple:
        audio = input_values.float()
        if audio.ndim != 2:
            raise ValueError(f"input_values: expected (B, S) waveforms, got {tuple(audio.shape)}")
        lengths = attention_mask.long().sum(-1) if attention_mask is not None else \
            torch.full((audio.shape[0],), audio.shape[1], device=audio.device)
        audio = audio * (torch.arange(audio.shape[1], device=audio.device) < lengths[:, None])
        feats, frame_lengths = self.logmel(audio, lengths)
        states, enc_lengths = self.encoder(feats, frame_lengths)
        hidden = tuple(states) if output_hidden_states else None
        if return_dict is False:
            return tuple(v for v in (states[-1], hidden, enc_lengths) if v is not None)
        return WavLMDSOutput(last_hidden_state=states[-1], hidden_states=hidden,
                             frame_lengths=enc_lengths)

"""WavLM self-attention with the gated relative position bias (the "refined attention").

The bucket table `Embedding(num_buckets, heads)` lives once in the encoder and is shared
by all layers (as in WavLM); each layer owns the gate: `Linear(head_dim, 8)` applied to the
head slice of the attention's input (the block input after its pre-LayerNorm),
g_u = sigmoid(sum of outputs 0-3), g_r = sigmoid(sum of 4-7),
gate = g_u * (g_r * a_h - 1) + 2 with a_h learned per head (init 1). The bias added to
score(i, j) of head h is gate[b, h, i] * table[h, bucket(j - i)]; the attention math itself
is `wavlm_ds.ops.attention.gated_bias_attention`, which never needs the (B, H, T, T) bias.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from wavlm_ds.model.config import ModelConfig
from wavlm_ds.ops.attention import BlockMask, gated_bias_attention


def relative_position_bucket(relative: torch.Tensor, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """WavLM/T5 bidirectional buckets: half per direction, exact below num_buckets/4,
    log-spaced up to max_distance, clamped beyond."""
    half = num_buckets // 2
    buckets = (relative > 0).long() * half
    distance = relative.abs()
    max_exact = half // 2
    is_small = distance < max_exact
    large = max_exact + (torch.log(distance.float().clamp(min=1) / max_exact)
                         / math.log(max_distance / max_exact) * (half - max_exact)).long()
    large = large.clamp(max=half - 1)
    return buckets + torch.where(is_small, distance, large)


class RelativePositionTable(nn.Module):
    """The shared bucket table; `forward(T)` gives rel_bias (H, 2T - 1) for j - i in
    [-(T - 1), T - 1] with an O(T * H) lookup."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_buckets, self.max_distance = cfg.num_buckets, cfg.max_distance
        self.embedding = nn.Embedding(cfg.num_buckets, cfg.num_heads)

    def forward(self, T: int) -> torch.Tensor:
        device = self.embedding.weight.device
        relative = torch.arange(-(T - 1), T, device=device)  # (2T - 1,)
        buckets = relative_position_bucket(relative, self.num_buckets, self.max_distance)
        return self.embedding(buckets).transpose(0, 1)  # (H, 2T - 1)


class GatedRelPosAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.model_dim, 3 * cfg.model_dim)
        self.out_proj = nn.Linear(cfg.model_dim, cfg.model_dim)
        self.gate_linear = nn.Linear(cfg.head_dim, 8)
        self.gate_const = nn.Parameter(torch.ones(cfg.num_heads))
        self.dropout_p = cfg.attention_dropout
        self.impl = cfg.attention_impl

    def gate(self, h: torch.Tensor) -> torch.Tensor:
        """h (B, T, D) normalized block input -> gate (B, H, T)."""
        B, T, _ = h.shape
        g = self.gate_linear(h.view(B, T, self.num_heads, self.head_dim))  # (B, T, H, 8)
        g = torch.sigmoid(g.view(B, T, self.num_heads, 2, 4).sum(-1))  # (B, T, H, 2)
        gate = g[..., 0] * (g[..., 1] * self.gate_const - 1.0) + 2.0  # (B, T, H)
        return gate.transpose(1, 2)  # (B, H, T)

    def forward(self, h: torch.Tensor, rel_bias: torch.Tensor,
                key_padding_mask: torch.Tensor | None, block_mask: BlockMask | None = None,
                impl: str | None = None) -> torch.Tensor:
        """h (B, T, D); impl: the path the encoder chose for this forward (None: the
        config's); block_mask: flex's padding mask, shared by all layers."""
        B, T, D = h.shape
        qkv = self.qkv(h).view(B, T, 3, self.num_heads, self.head_dim)  # (B, T, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, Dh)
        out = gated_bias_attention(q, k, v, self.gate(h), rel_bias.to(h.dtype), key_padding_mask,
                                   dropout_p=self.dropout_p if self.training else 0.0,
                                   impl=impl or self.impl, block_mask=block_mask)  # (B, H, T, Dh)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))

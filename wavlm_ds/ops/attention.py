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

from wavlm_ds.ops.blocked_attention import blocked_attention
from wavlm_ds.ops.gpu_gate import cuda_fast_path_enabled


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


def flex_gated_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate: torch.Tensor,
                         rel_bias: torch.Tensor, key_padding_mask: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """FlexAttention with the factorized bias as a score_mod (compiled; CUDA for training).

    On CPU (torch 2.11) the compiled forward works but its backward raises
    NotImplementedError, and flex_attention has no dropout argument.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    T = q.shape[-2]

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + gate[b, h, q_idx] * rel_bias[h, kv_idx - q_idx + T - 1]

    block_mask = None
    if key_padding_mask is not None:
        keep = ~key_padding_mask

        def mask_mod(b, h, q_idx, kv_idx):
            return keep[b, kv_idx]

        block_mask = create_block_mask(mask_mod, q.shape[0], None, T, T, device=q.device)
    return _compiled_flex()(q, k, v, score_mod=score_mod, block_mask=block_mask)


_FLEX = None


def _compiled_flex():
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention
        _FLEX = torch.compile(flex_attention)
    return _FLEX


def choose_impl(impl: str, device: torch.device, dropout_p: float) -> str:
    """'auto' -> the fastest path allowed here.

    CUDA with a passed self-test (or forced): flex. Attention dropout > 0: reference (the
    fused paths have none). Otherwise blocked, the memory-lean path on any device.
    """
    if impl != "auto":
        return impl
    if dropout_p > 0:
        return "reference"
    if cuda_fast_path_enabled("attention", device):
        return "flex"
    return "blocked"


def gated_bias_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate: torch.Tensor,
                         rel_bias: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                         dropout_p: float = 0.0, impl: str = "auto") -> torch.Tensor:
    """Dispatch: 'auto' | 'reference' (explicit bias) | 'blocked' (CPU/any, lean) | 'flex'.

    Attention dropout exists only on the reference path; asking a fused path for it is an
    error (auto falls back to the reference instead).
    """
    chosen = choose_impl(impl, q.device, dropout_p)
    if chosen == "reference":
        return attention_reference(q, k, v, gate, rel_bias, key_padding_mask, dropout_p)
    if dropout_p > 0:
        raise ValueError(f"attention impl {chosen!r} has no attention dropout; set "
                         "model.attention_dropout: 0.0 or model.attention_impl: reference")
    if chosen == "blocked":
        return blocked_attention(q, k, v, gate, rel_bias, key_padding_mask)
    if chosen == "flex":
        return flex_gated_attention(q, k, v, gate, rel_bias, key_padding_mask)
    raise ValueError(f"unknown attention impl {impl!r}; use auto, reference, blocked or flex")

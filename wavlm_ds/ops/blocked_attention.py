"""Memory-lean gated-bias attention for CPU training: a custom autograd function over query
blocks that never materializes the (B, H, T, T) bias or probabilities.

Forward, per block of `block` queries: scores = q k^T * scale + gate * rel_bias[offsets],
key padding -> -inf, row logsumexp, P = exp(scores - lse), out = P v. Saved for backward:
q, k, v, gate, rel_bias, out and lse (O(T) per row), as in FlashAttention. Backward
recomputes each block's scores and accumulates dq, dk, dv, dgate and d rel_bias (a
scatter-add of sum_b dS * gate along the block's diagonals), so peak extra memory is
O(B * H * block * T) instead of O(B * H * T^2).

Math runs in fp32 whatever the input dtype (bf16 inputs are upcast per block), results are
cast back. No attention dropout on this path: the dispatcher falls back to the reference
when dropout_p > 0 (see wavlm_ds/ops/attention.py).
"""
from __future__ import annotations

import torch

# 64 queries per block: at B=4, H=16, T=800 the peak of live tensor bytes over forward +
# backward is 129 MiB vs 525 MiB for the explicit-bias reference (0.25; 128 gives 0.40,
# 32 gives 0.18 at 20% more time). See BENCHMARKS.md.
BLOCK = 64


def _offsets(i0: int, i1: int, T: int, device: torch.device) -> torch.Tensor:
    """(i1 - i0, T) index into rel_bias's last dim: (j - i) + T - 1."""
    i = torch.arange(i0, i1, device=device)
    j = torch.arange(T, device=device)
    return j[None, :] - i[:, None] + (T - 1)


def _scores(q_blk, k, gate_blk, rel_bias, offs, pad, scale):
    """(B, H, Tq, T) fp32 scores of one query block, bias rebuilt from its factors."""
    s = torch.matmul(q_blk, k.transpose(-1, -2)) * scale  # (B, H, Tq, T)
    s = s + gate_blk[..., None] * rel_bias[:, offs][None]  # (B, H, Tq, T)
    if pad is not None:
        s = s.masked_fill(pad[:, None, None, :], float("-inf"))
    return s


class BlockedGatedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, gate, rel_bias, key_padding_mask, block):
        dtype = q.dtype
        qf, kf, vf, gf, rf = (x.float() for x in (q, k, v, gate, rel_bias))
        B, H, T, Dh = q.shape
        scale = Dh ** -0.5
        out = torch.empty(B, H, T, Dh, dtype=torch.float32, device=q.device)
        lse = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
        for i0 in range(0, T, block):
            i1 = min(i0 + block, T)
            s = _scores(qf[:, :, i0:i1], kf, gf[:, :, i0:i1], rf, _offsets(i0, i1, T, q.device),
                        key_padding_mask, scale)
            lse[:, :, i0:i1] = torch.logsumexp(s, dim=-1)
            p = torch.exp(s - lse[:, :, i0:i1, None])
            out[:, :, i0:i1] = torch.matmul(p, vf)
        ctx.save_for_backward(q, k, v, gate, rel_bias, out, lse)
        ctx.key_padding_mask, ctx.block, ctx.dtype = key_padding_mask, block, dtype
        return out.to(dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, gate, rel_bias, out, lse = ctx.saved_tensors
        qf, kf, vf, gf, rf = (x.float() for x in (q, k, v, gate, rel_bias))
        do = grad_out.float()
        B, H, T, Dh = q.shape
        scale = Dh ** -0.5
        dq, dk, dv = torch.zeros_like(qf), torch.zeros_like(kf), torch.zeros_like(vf)
        dgate, drel = torch.zeros_like(gf), torch.zeros_like(rf)
        delta = (do * out).sum(-1)  # (B, H, T): rowsum(dO * O)
        for i0 in range(0, T, ctx.block):
            i1 = min(i0 + ctx.block, T)
            offs = _offsets(i0, i1, T, q.device)
            s = _scores(qf[:, :, i0:i1], kf, gf[:, :, i0:i1], rf, offs, ctx.key_padding_mask, scale)
            p = torch.exp(s - lse[:, :, i0:i1, None])  # (B, H, Tq, T)
            do_blk = do[:, :, i0:i1]
            dv += torch.matmul(p.transpose(-1, -2), do_blk)
            ds = p * (torch.matmul(do_blk, vf.transpose(-1, -2)) - delta[:, :, i0:i1, None])
            dq[:, :, i0:i1] = torch.matmul(ds, kf) * scale
            dk += torch.matmul(ds.transpose(-1, -2), qf[:, :, i0:i1]) * scale
            dgate[:, :, i0:i1] = (ds * rf[:, offs][None]).sum(-1)
            weighted = (ds * gf[:, :, i0:i1, None]).sum(0)  # (H, Tq, T)
            drel.scatter_add_(1, offs.reshape(1, -1).expand(H, -1), weighted.reshape(H, -1))
        cast = lambda g, like: g.to(like.dtype)  # noqa: E731
        return (cast(dq, q), cast(dk, k), cast(dv, v), cast(dgate, gate), cast(drel, rel_bias),
                None, None)


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate: torch.Tensor,
                      rel_bias: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                      block: int = BLOCK) -> torch.Tensor:
    """Same contract as attention_reference (without dropout); see the module docstring."""
    return BlockedGatedAttention.apply(q, k, v, gate, rel_bias, key_padding_mask, block)

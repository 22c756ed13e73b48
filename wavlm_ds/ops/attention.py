"""Attention with WavLM's gated relative position bias.

The bias of head h for query i and key j factorizes as

    bias[b, h, i, j] = gate[b, h, i] * rel_bias[h, (j - i) + T - 1]

where `rel_bias` (H, 2T - 1) is the shared bucket table looked up once per distance. The
reference path below materializes the (B, H, T, T) bias, as every public implementation
does; the fast paths in this package never do.

Shapes: q, k, v (B, H, T, Dh); gate (B, H, T); rel_bias (H, 2T - 1);
key_padding_mask (B, T) bool, True where the key is padding. Returns (B, H, T, Dh).

Paths: `reference` (explicit bias, with dropout), `blocked` (CPU, O(T) extra memory, a
custom autograd over query blocks), `sdpa` (torch's scaled_dot_product_attention with the
bias built once per layer as a float mask: the memory-efficient kernel on CUDA, the
default there) and `flex` (FlexAttention with the factorized bias as a score_mod; CUDA,
once the self-test proved it on that GPU model). `choose_impl` says which runs where.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from wavlm_ds.ops.blocked_attention import blocked_attention
from wavlm_ds.ops.gpu_gate import cuda_fast_path_enabled


# `blocked` at or below this many scores per call (B * H * T^2; 16 MiB in fp32) runs the
# explicit-bias math instead: the memory it saves is small there, and its block loop and
# backward recompute cost time: the loop is 1.18x (T=150) and 1.19x (T=300) slower at the
# demo's B=4, H=4, head dim 24 (`tools/bench_ops.py --only attention_small`, BENCHMARKS.md).
BLOCKED_MIN_SCORES = 1 << 22


@contextlib.contextmanager
def blocked_at_every_size() -> Iterator[None]:
    """Within: `blocked` runs its block loop at every size (memory measurements of it)."""
    global BLOCKED_MIN_SCORES
    saved, BLOCKED_MIN_SCORES = BLOCKED_MIN_SCORES, 0
    try:
        yield
    finally:
        BLOCKED_MIN_SCORES = saved


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


def padded_bias(gate: torch.Tensor, rel_bias: torch.Tensor,
                key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    """The gated bias as an SDPA float mask (B, H, T, T) in gate's dtype, padding folded in
    as -inf, stored with its last dim rounded up to a multiple of 8 and returned as a view:
    the memory-efficient kernel needs 16-byte aligned rows and would pad a copy per call."""
    B, H, T = gate.shape
    T8 = -(-T // 8) * 8
    pos = torch.arange(T, device=gate.device)
    cols = torch.arange(T8, device=gate.device)
    offsets = (cols[None, :] - pos[:, None] + (T - 1)).clamp(max=2 * T - 2)  # (T, T8)
    bias = gate.unsqueeze(-1) * rel_bias[:, offsets].to(gate.dtype).unsqueeze(0)  # (B, H, T, T8)
    if key_padding_mask is not None:
        keys = F.pad(key_padding_mask, (0, T8 - T), value=True)  # (B, T8)
        bias = bias.masked_fill(keys[:, None, None, :], float("-inf"))
    return bias[..., :T]


def sdpa_gated_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate: torch.Tensor,
                         rel_bias: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                         dropout_p: float = 0.0) -> torch.Tensor:
    """torch's scaled_dot_product_attention with the gated bias as a float attn_mask.

    On CUDA a call that needs gradients runs only the memory-efficient kernel (the one fused
    backend that takes a float mask and returns its gradient: flash takes no mask, cuDNN
    gives no mask gradient), so a fall back to the math kernel is an error, not a silent
    slowdown; calls without grad may also use cuDNN. On CPU torch picks (the math kernel:
    CPU flash refuses a mask that needs grad).
    """
    bias = padded_bias(gate.to(q.dtype), rel_bias, key_padding_mask)
    if not q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
    backends = [SDPBackend.EFFICIENT_ATTENTION]
    if not torch.is_grad_enabled():
        backends.append(SDPBackend.CUDNN_ATTENTION)
    with sdpa_kernel(backends):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)


def flex_block_mask(key_padding_mask: torch.Tensor) -> BlockMask:
    """One block mask for a batch's key padding (B, T) bool, True = padding; the encoder
    builds it once per forward and every layer shares it (create_block_mask costs far more
    than a kernel launch)."""
    keep = ~key_padding_mask
    B, T = key_padding_mask.shape

    def mask_mod(b, h, q_idx, kv_idx):
        return keep[b, kv_idx]

    return create_block_mask(mask_mod, B, None, T, T, device=key_padding_mask.device)


def flex_gated_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate: torch.Tensor,
                         rel_bias: torch.Tensor, block_mask: BlockMask | None = None
                         ) -> torch.Tensor:
    """FlexAttention with the factorized bias as a score_mod (compiled; CUDA for training).

    The score_mod reads T from rel_bias's size (2T - 1), never from a Python int in its
    closure, so one compiled graph serves every length (automatic dynamic shapes). On CPU
    (torch 2.11) the compiled forward works but its backward raises NotImplementedError;
    flex_attention has no dropout argument.
    """
    def score_mod(score, b, h, q_idx, kv_idx):
        centre = (rel_bias.shape[-1] - 1) // 2  # T - 1
        return score + gate[b, h, q_idx] * rel_bias[h, kv_idx - q_idx + centre]

    return _compiled_flex()(q, k, v, score_mod=score_mod, block_mask=block_mask)


_FLEX = None


def _compiled_flex():
    global _FLEX
    if _FLEX is None:
        # dynamic=None: the first length compiles static, the second marks T dynamic.
        # (dynamic=True with a BlockMask fails in inductor's C++ backend with torch 2.11.)
        _FLEX = torch.compile(flex_attention, dynamic=None)
    return _FLEX


def choose_impl(impl: str, device: torch.device, dropout_p: float, compiled: bool = False) -> str:
    """'auto' -> the implementation to run here.

    CUDA: `flex` where the self-test proved it exact and faster on this GPU model (or
    model.fast_paths is force) and there is no attention dropout, else `sdpa` (torch's own
    fused kernel, which needs no self-test). Never `blocked`, a Python loop of small ops.
    CPU: `blocked` (memory-lean) unless the blocks are compiled (`sdpa`: one graph for every
    length, where blocked's loop would unroll per length) or attention dropout > 0
    (`reference`, the explicit-bias path with dropout).
    """
    if impl != "auto":
        return impl
    if device.type == "cuda":
        if dropout_p == 0 and cuda_fast_path_enabled("attention_flex", device):
            return "flex"
        return "sdpa"
    if dropout_p > 0:
        return "reference"
    return "sdpa" if compiled else "blocked"


def gated_bias_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate: torch.Tensor,
                         rel_bias: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                         dropout_p: float = 0.0, impl: str = "auto",
                         block_mask: BlockMask | None = None) -> torch.Tensor:
    """Dispatch: 'auto' | 'reference' (explicit bias) | 'blocked' (CPU, lean; the explicit
    math at or below BLOCKED_MIN_SCORES scores per call) | 'sdpa' (torch's fused kernel, the
    CUDA default) | 'flex'.

    `flex` takes its padding as `block_mask` (built once per forward by the caller, None
    when nothing is padded); given only `key_padding_mask` it builds one here. Attention
    dropout exists on 'reference' and 'sdpa'; asking blocked or flex for it is an error.
    """
    chosen = choose_impl(impl, q.device, dropout_p)
    if chosen == "reference":
        return attention_reference(q, k, v, gate, rel_bias, key_padding_mask, dropout_p)
    if chosen == "sdpa":
        return sdpa_gated_attention(q, k, v, gate, rel_bias, key_padding_mask, dropout_p)
    if chosen not in ("blocked", "flex"):
        raise ValueError(f"unknown attention impl {impl!r}; use auto, reference, blocked, "
                         "sdpa or flex")
    if dropout_p > 0:
        raise ValueError(f"attention impl {chosen!r} has no attention dropout; set "
                         "model.attention_dropout: 0.0 or model.attention_impl: sdpa")
    if chosen == "blocked":
        B, H, T, _ = q.shape
        if B * H * T * T <= BLOCKED_MIN_SCORES:
            return attention_reference(q, k, v, gate, rel_bias, key_padding_mask)
        return blocked_attention(q, k, v, gate, rel_bias, key_padding_mask)
    if block_mask is None and key_padding_mask is not None:
        block_mask = flex_block_mask(key_padding_mask)
    return flex_gated_attention(q, k, v, gate, rel_bias, block_mask)

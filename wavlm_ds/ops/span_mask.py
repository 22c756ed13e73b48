"""Span masks on the device: an exact-count circular masker and fairseq's semantics.

`span_mask` masks exactly round(ratio * length) valid frames per row, in spans of `span`
frames (the last one shorter when the count is not a multiple), never in padding, with
every valid position masked at the same rate. Why circular: placing non-overlapping spans
uniformly on a line masks the edges less often than the middle (a span covering frame 0
must start at 0). Here the row is a circle of its own length: we lay out
[gap][span][gap][span]... with random gaps that sum to the unmasked count, then rotate by a
uniform random offset. Rotation makes every position equally likely, whatever the gap
distribution; spans may wrap from the end of the row to its start.

No Python loop over rows, no host sync, no numpy, static shapes: it compiles with
torch.compile(fullgraph=True, dynamic=True) under the default dynamo config (the
generator draws happen just outside, in `span_mask`: dynamo cannot trace a Generator). A row of
length 0 gets no mask; a span longer than a row gives one circular span of
round(ratio * length) frames.
"""
from __future__ import annotations

import torch


def _check(lengths: torch.Tensor, T: int, ratio: float, span: int) -> None:
    if lengths.ndim != 1 or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(f"lengths: expected a 1-D integer tensor, got {lengths.dtype} "
                         f"{tuple(lengths.shape)}")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio={ratio}: must be in (0, 1)")
    if span < 1:
        raise ValueError(f"span={span}: must be >= 1")
    if T < 0:
        raise ValueError(f"T={T}: must be >= 0")
    if not torch.compiler.is_compiling() and lengths.device.type == "cpu":
        if bool((lengths < 0).any() | (lengths > T).any()):
            raise ValueError(f"lengths: every value must be in [0, {T}], got {lengths.tolist()}")


def span_mask(lengths: torch.Tensor, T: int, ratio: float = 0.8, span: int = 10,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """lengths (B,) -> (B, T) bool with exactly round(ratio * length) True per row.

    The generator draws two uniform tensors on the device; `place_spans` turns them into
    the mask and is pure tensor code (the part that compiles with fullgraph=True).
    """
    _check(lengths, T, ratio, span)
    max_spans = max(1, -(-round(ratio * T) // span))
    B, device = lengths.shape[0], lengths.device
    u_gaps = torch.rand(B, max_spans, device=device, generator=generator, dtype=torch.float64)
    u_offset = torch.rand(B, device=device, generator=generator, dtype=torch.float64)
    return place_spans(lengths, T, ratio, span, u_gaps, u_offset)


def place_spans(lengths: torch.Tensor, T: int, ratio: float, span: int, u_gaps: torch.Tensor,
                u_offset: torch.Tensor) -> torch.Tensor:
    """Deterministic core: uniforms u_gaps (B, K) and u_offset (B,) -> mask (B, T).

    K must be at least ceil(round(ratio * T) / span), the most spans a row can need.
    """
    device, B, K = lengths.device, u_gaps.shape[0], u_gaps.shape[1]
    L = lengths.long()
    n = torch.round(L.double() * ratio).long()  # masked frames per row, (B,)
    k = torch.div(n + span - 1, span, rounding_mode="floor")  # spans per row, (B,)
    j = torch.arange(K, device=device)  # (K,)
    span_len = torch.where(j[None, :] < k[:, None] - 1, span, n[:, None] - (k[:, None] - 1) * span)
    span_len = torch.where(j[None, :] < k[:, None], span_len, 0)  # (B, K)
    # Gaps: integer random weights; cut points = floor(cumulative share x unmasked count),
    # in exact integer arithmetic so eager and compiled code agree bit for bit, and the
    # gaps sum to L - n exactly.
    w = torch.where(j[None, :] < k[:, None], (u_gaps * 1024).long() + 1, 0)  # (B, K)
    cum = w.cumsum(1)
    cut = cum * (L - n)[:, None] // cum[:, -1:].clamp(min=1)
    cut = torch.where(j[None, :] >= k[:, None] - 1, (L - n)[:, None], cut)
    gaps = torch.diff(cut, dim=1, prepend=torch.zeros(B, 1, dtype=torch.long, device=device))
    starts = gaps.cumsum(1) + span_len.cumsum(1) - span_len  # (B, K) on the unrotated circle
    # Rotate, then paint the spans with a difference array: +1 at each span start, -1 after
    # its end, a span that wraps past the row's end restarts at 0; a cumsum gives the mask.
    offset = (u_offset * L.double()).long()  # rotation in [0, L)
    a = torch.remainder(starts + offset[:, None], L.clamp(min=1)[:, None])  # (B, K)
    b = a + span_len
    wraps = (b > L[:, None]).long()
    diff = torch.zeros(B, T + 1, dtype=torch.long, device=device)
    diff.scatter_add_(1, a, torch.ones_like(a))
    diff.scatter_add_(1, torch.minimum(b, L[:, None]), -torch.ones_like(a))
    diff[:, 0] += wraps.sum(1)
    diff.scatter_add_(1, (b - L[:, None]).clamp(0, T), -wraps)
    t = torch.arange(T, device=device)
    return (diff[:, :T].cumsum(1) > 0) & (t[None, :] < L[:, None])


def fairseq_span_mask(lengths: torch.Tensor, T: int, mask_prob: float, mask_length: int,
                      min_masks: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """fairseq `compute_mask_indices` semantics (static lengths, overlap allowed), on device.

    Per row: num_spans = floor(mask_prob * length / mask_length + U(0, 1)), at least
    min_masks, at most the number of start positions; distinct starts drawn uniformly from
    [0, length - mask_length]; each masks mask_length frames. The effective masked fraction
    is about 1 - (1 - p / L)^L because spans overlap (p = 0.65, L = 10 -> ~49%).
    """
    _check(lengths, T, min(max(mask_prob, 1e-9), 1 - 1e-9), mask_length)
    device, B = lengths.device, lengths.shape[0]
    L = lengths.long()
    num_starts = (L - mask_length + 1).clamp(min=0)  # (B,)
    draw = torch.rand(B, device=device, generator=generator, dtype=torch.float64)
    num = torch.floor(mask_prob * L.double() / mask_length + draw).long()
    num = torch.minimum(num.clamp(min=min_masks), num_starts)
    t = torch.arange(T, device=device)
    keys = torch.rand(B, T, device=device, generator=generator)
    keys = torch.where(t[None, :] < num_starts[:, None], keys, 2.0)  # invalid starts last
    rank = keys.argsort(dim=1).argsort(dim=1)  # (B, T): rank of each start's random key
    starts = (rank < num[:, None]).long()
    covered = starts.cumsum(1)
    covered = covered - torch.nn.functional.pad(covered, (mask_length, 0))[:, :T]
    return (covered > 0) & (t[None, :] < L[:, None])

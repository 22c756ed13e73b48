"""Span masks on the device: an exact-count circular masker and fairseq's semantics.

`span_mask` masks exactly round(ratio * length) valid frames per row, in spans of `span`
frames (the last one shorter when the count is not a multiple), never in padding, with
every valid position masked at the same rate. Why circular: placing non-overlapping spans
uniformly on a line masks the edges less often than the middle (a span covering frame 0
must start at 0). Here the row is a circle of its own length: we lay out
[span][gap][span][gap]... and rotate the layout by a uniform random offset. Rotation makes
every position equally likely whatever the gaps are; spans may wrap from the end of the row
to its start. The k gaps share the row's L - n unmasked frames by stratified jitter: span j
is preceded by floor((j + u_j) / k * (L - n)) unmasked frames in total, u_j uniform in
[0, 1), so each gap lies in [0, 2 (L - n) / k) (triangular around the mean) and the gaps sum
to L - n exactly. All arithmetic on the draws is integer (20-bit uniforms), so eager and
compiled code agree bit for bit.

No Python loop over rows, no host sync, no numpy, static shapes, about 35 tensor ops of
which only 4 touch a (B, T) tensor: the rotation is applied to the (B, 2K) span endpoints,
which are folded back onto the row (the one span that straddles the row's end gets a
+1/-1 correction), then painted into a (B, T + 1) difference array (+1 at each start, -1
past each end) that one cumsum turns into the mask. `place_spans` compiles with
torch.compile(fullgraph=True, dynamic=True) under the default dynamo config (the generator
draw happens just outside, in `span_mask`: dynamo cannot trace a Generator). A row of
length 0 gets no mask; a span longer than a row gives one circular span of
round(ratio * length) frames.
"""
from __future__ import annotations

import torch

from wavlm_ds.ops.checks import assert_on_device

JITTER_BITS = 20  # resolution of the integer uniforms that place the spans


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
    if (not torch.compiler.is_compiling() and lengths.device.type == "cpu"
            and lengths.numel()):
        lo, hi = torch.aminmax(lengths)
        assert_on_device((lo >= 0) & (hi <= T), lambda: f"lengths: every value must be in "
                         f"[0, {T}], got {lengths.tolist()}", "span_mask: lengths out of [0, T]")


def max_spans(T: int, ratio: float, span: int) -> int:
    """The most spans a row of at most T frames can need: ceil(round(ratio * T) / span)."""
    return max(1, -(-round(ratio * T) // span))


def span_mask(lengths: torch.Tensor, T: int, ratio: float = 0.8, span: int = 10,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """lengths (B,) -> (B, T) bool with exactly round(ratio * length) True per row.

    The generator draws one integer tensor (B, K + 1) on the device; `place_spans` turns
    it into the mask and is pure tensor code (the part that compiles with fullgraph=True).
    """
    _check(lengths, T, ratio, span)
    draws = torch.randint(0, 1 << JITTER_BITS, (lengths.shape[0], max_spans(T, ratio, span) + 1),
                          device=lengths.device, generator=generator)
    return place_spans(lengths, T, ratio, span, draws)


_Tables = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
_TABLES: dict[tuple, _Tables] = {}


def _tables(T: int, ratio: float, span: int, K: int, device: torch.device) -> _Tables:
    """Constants of one (T, ratio, span, K, device), built once in eager mode.

    per_length (T + 1, 3): for a row of length L, [n, L - n, max(k * 2^20, 1)] with
    n = round(ratio * L) masked frames and k = ceil(n / span) spans; a lookup replaces
    ~10 tiny per-call ops. j_one (K,): j * 2^20. offsets (2K,): span j's start and end
    before the gaps, [j * span]_j then [(j + 1) * span]_j. sign (2K,) int32: +1 then -1.
    """
    key = (T, ratio, span, K, device)
    if not torch.compiler.is_compiling() and key in _TABLES:
        return _TABLES[key]
    L = torch.arange(T + 1, device=device)
    n = torch.round(L.double() * ratio).long()
    k = torch.div(n + (span - 1), span, rounding_mode="floor")
    per_length = torch.stack([n, L - n, (k << JITTER_BITS).clamp(min=1)], dim=1)
    j = torch.arange(K, device=device)
    offsets = torch.cat([j * span, (j + 1) * span])
    sign = torch.cat([torch.ones(K, dtype=torch.int32, device=device),
                      torch.full((K,), -1, dtype=torch.int32, device=device)])
    out = (per_length, j << JITTER_BITS, offsets, sign)
    if not torch.compiler.is_compiling():
        if len(_TABLES) >= 32:
            _TABLES.pop(next(iter(_TABLES)))
        _TABLES[key] = out
    return out


def place_spans(lengths: torch.Tensor, T: int, ratio: float, span: int,
                draws: torch.Tensor) -> torch.Tensor:
    """Deterministic core: integer uniforms draws (B, K + 1) in [0, 2^20) -> mask (B, T).

    Column 0 rotates the row, columns 1.. jitter the gaps; K >= max_spans(T, ratio, span).
    """
    B, K = draws.shape[0], draws.shape[1] - 1
    per_length, j_one, offsets, sign = _tables(T, ratio, span, K, lengths.device)
    L = lengths.long()[:, None]  # (B, 1)
    row = per_length[lengths]  # (B, 3)
    n, unmasked, k_one = row[:, 0:1], row[:, 1:2], row[:, 2:3]
    # Unmasked frames before span j: floor((j + u_j) / k * (L - n)), non-decreasing in j,
    # below L - n; span j covers [g_j + j*span, g_j + min((j+1)*span, n)) before rotation
    # (spans j >= k are empty). Rotating by offset in [0, L) puts it inside [0, 2L).
    # An empty span's g would grow past L - n (j / k > 1) and its endpoints past 2L, out of
    # the difference array: clamped to L - n, its +1 and -1 land on one index and cancel.
    g = torch.div((j_one + draws[:, 1:]) * unmasked, k_one, rounding_mode="floor")
    g = torch.minimum(g, unmasked)
    g = g + ((draws[:, :1] * L) >> JITTER_BITS)  # + rotation
    ends = g.repeat(1, 2) + torch.minimum(offsets, n)  # (B, 2K): starts then ends
    # Fold [L, 2L) back onto the row: an endpoint >= L moves by -L. The one span that
    # straddles L (start < L <= end) then needs +1 at 0 and -1 at L; `straddle` is minus
    # its count (starts folded minus ends folded: 0 or -1).
    folds = ends >= L
    ends = torch.where(folds, ends - L, ends)
    straddle = (folds * sign).sum(1, keepdim=True, dtype=torch.int32)
    # Paint with a difference array: +1 at each start, -1 at each end, the straddler's
    # correction, then one cumsum. Only zeros, one scatter, cumsum and the cast touch (B, T).
    diff = torch.zeros(B, T + 1, dtype=torch.int32, device=lengths.device)
    diff.scatter_add_(1, ends, sign.expand(B, -1))
    diff[:, :1] -= straddle
    diff.scatter_add_(1, L, straddle)
    return diff.cumsum_(1)[:, :T].bool()


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

"""Span masker: exact counts, never in padding, uniform per-position rate, determinism,
compile without host syncs, fairseq semantics, bad input."""
from __future__ import annotations

import pytest
import torch

from wavlm_ds.ops.span_mask import JITTER_BITS, fairseq_span_mask, max_spans, place_spans, span_mask


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_exact_count_and_no_padding():
    lengths = torch.randint(0, 800, (256,), generator=gen(1))
    for ratio, span in [(0.8, 10), (0.5, 7), (0.3, 1), (0.8, 900)]:
        mask = span_mask(lengths, 800, ratio, span, gen(2))
        assert torch.equal(mask.sum(1), torch.round(lengths.double() * ratio).long())
        assert not (mask & (torch.arange(800)[None] >= lengths[:, None])).any()


def test_rows_much_shorter_than_T_at_fine_tuning_rates():
    # A short row needs far fewer spans than the K drawn for T; those empty spans once
    # landed past the difference array (IndexError at e.g. T 19, length 18, 0.3, span 5).
    for ratio, span, T in [(0.3, 5, 19), (0.3, 10, 337), (0.5, 20, 229), (0.3, 5, 4)]:
        lengths = torch.arange(T + 1)
        for seed in range(4):
            mask = span_mask(lengths, T, ratio, span, gen(seed))
            assert torch.equal(mask.sum(1), torch.round(lengths.double() * ratio).long())
            assert not (mask & (torch.arange(T)[None] >= lengths[:, None])).any()


def test_spans_have_the_requested_length():
    lengths = torch.full((64,), 500)
    mask = span_mask(lengths, 500, 0.8, 10, gen(3))
    # Count runs on the circle: 400 masked frames in spans of 10 -> at most 40 runs.
    starts = mask & ~torch.roll(mask, 1, dims=1)
    assert (starts.sum(1) <= 40).all()


@pytest.mark.parametrize("length", [123, 800])
def test_every_position_is_masked_at_the_same_rate(length):
    n = 20000
    mask = span_mask(torch.full((n,), length), length, 0.8, 10, gen(4))
    rate = mask.float().mean(0)
    p = mask.sum().item() / (n * length)
    sigma = (p * (1 - p) / n) ** 0.5
    assert ((rate - p).abs() / sigma).max() < 4.0
    assert rate[0] > p - 4 * sigma and rate[-1] > p - 4 * sigma  # edges included


def test_random_lengths_rate_is_uniform_over_valid_positions():
    lengths = torch.randint(300, 401, (20000,), generator=gen(5))
    mask = span_mask(lengths, 400, 0.8, 10, gen(6))
    valid = torch.arange(400)[None] < lengths[:, None]
    # Position t relative to each row's end: uniform too (circular placement).
    rate = mask[:, :300].float().mean(0)
    expected = (torch.round(lengths.double() * 0.8) / lengths).mean()
    sigma = (0.8 * 0.2 / 20000) ** 0.5
    assert ((rate - expected).abs() / sigma).max() < 4.0
    assert valid[:, :300].all()


def test_same_generator_same_mask():
    lengths = torch.randint(10, 200, (16,), generator=gen(7))
    assert torch.equal(span_mask(lengths, 200, generator=gen(9)),
                       span_mask(lengths, 200, generator=gen(9)))
    assert not torch.equal(span_mask(lengths, 200, generator=gen(9)),
                           span_mask(lengths, 200, generator=gen(10)))


@pytest.mark.slow
def test_compiles_fullgraph_without_host_sync():
    """Default dynamo config (no capture_scalar_outputs): a host sync would break the graph."""
    compiled = torch.compile(place_spans, fullgraph=True, dynamic=True)
    for B, T in [(8, 300), (5, 500)]:
        lengths = torch.randint(0, T, (B,), generator=gen(11))
        draws = torch.randint(0, 1 << JITTER_BITS, (B, max_spans(T, 0.8, 10) + 1), generator=gen(12))
        out = compiled(lengths, T, 0.8, 10, draws)
        assert torch.equal(out, place_spans(lengths, T, 0.8, 10, draws))
        assert torch.equal(out.sum(1), torch.round(lengths.double() * 0.8).long())


def test_fairseq_semantics_effective_ratio():
    mask = fairseq_span_mask(torch.full((2000,), 800), 800, 0.65, 10, 2, gen(14))
    expected = 1 - (1 - 0.65 / 10) ** 10  # overlapping spans: ~49%
    assert abs(mask.float().mean().item() - expected) < 0.02
    lengths = torch.tensor([0, 5, 800])
    m = fairseq_span_mask(lengths, 800, 0.65, 10, 2, gen(15))
    assert m[0].sum() == 0 and m[1].sum() == 0  # too short for one span
    assert not (m & (torch.arange(800)[None] >= lengths[:, None])).any()


def test_bad_input():
    lengths = torch.tensor([10, 20])
    with pytest.raises(ValueError, match="ratio"):
        span_mask(lengths, 20, ratio=1.0)
    with pytest.raises(ValueError, match="span"):
        span_mask(lengths, 20, span=0)
    with pytest.raises(ValueError, match=r"lengths: every value must be in \[0, 15\]"):
        span_mask(lengths, 15)
    with pytest.raises(ValueError, match="1-D integer"):
        span_mask(lengths.float(), 20)

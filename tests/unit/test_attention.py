"""Fused gated-bias attention paths vs the explicit-bias reference: outputs and gradients."""
from __future__ import annotations

import pytest
import torch

from wavlm_ds.ops.attention import (attention_reference, choose_impl, flex_gated_attention,
                                    gated_bias_attention)
from wavlm_ds.ops.blocked_attention import blocked_attention


def inputs(dtype=torch.float32, B=2, H=3, T=200, D=16, lengths=(200, 137)):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=g).to(dtype).requires_grad_() for _ in range(3))
    gate = (2 * torch.rand(B, H, T, generator=g)).to(dtype).requires_grad_()
    rel = torch.randn(H, 2 * T - 1, generator=g).to(dtype).requires_grad_()
    pad = torch.arange(T)[None] >= torch.tensor(lengths)[:, None]
    return (q, k, v, gate, rel), pad


def run(fn, tensors, pad, **kw):
    for t in tensors:
        t.grad = None
    out = fn(*tensors, pad, **kw)
    valid = (~pad)[:, None, :, None]
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    (out * weight * valid).float().sum().backward()
    return (out * valid).float(), [t.grad.float().clone() for t in tensors]


@pytest.mark.parametrize("block", [32, 128, 500])
def test_blocked_matches_reference_fp32(block):
    tensors, pad = inputs()
    ref_out, ref_grads = run(attention_reference, tensors, pad)
    out, grads = run(blocked_attention, tensors, pad, block=block)
    assert (out - ref_out).abs().max() <= 1e-5
    for name, a, b in zip("q k v gate rel_bias".split(), grads, ref_grads):
        assert (a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item()), name


def test_blocked_matches_reference_bf16():
    tensors, pad = inputs(torch.bfloat16)
    ref32, _ = run(attention_reference, [t.detach().float().requires_grad_() for t in tensors], pad)
    out, grads = run(blocked_attention, tensors, pad)
    # bf16 inputs, fp32 math inside: error of the same order as bf16 rounding of the output
    assert (out - ref32).abs().max() <= 2e-2 * ref32.abs().max()
    assert all(torch.isfinite(g).all() for g in grads)


def test_dispatch_and_dropout_policy():
    cpu = torch.device("cpu")
    assert choose_impl("auto", cpu, 0.0) == "blocked"
    assert choose_impl("auto", cpu, 0.1) == "reference"
    tensors, pad = inputs(T=40, lengths=(40, 30))
    with pytest.raises(ValueError, match="no attention dropout"):
        gated_bias_attention(*tensors, pad, dropout_p=0.1, impl="blocked")
    with pytest.raises(ValueError, match="unknown attention impl"):
        gated_bias_attention(*tensors, pad, impl="magic")


@pytest.mark.slow
def test_flex_forward_matches_reference_on_cpu():
    """CPU runs compiled flex_attention forward only (its backward needs CUDA)."""
    tensors, pad = inputs(T=128, lengths=(128, 77))
    with torch.no_grad():
        ref = attention_reference(*tensors, pad)
        out = flex_gated_attention(*[t.detach() for t in tensors], pad)
    valid = (~pad)[:, None, :, None]
    assert ((out - ref) * valid).abs().max() <= 1e-5

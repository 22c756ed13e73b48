"""model.compile: regional torch.compile of each block (inductor on CPU) against eager."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch._dynamo.utils import counters

from wavlm_ds.config import ModelConfig
from wavlm_ds.model import WavLMEncoder
from wavlm_ds.model.compile import compile_blocks

pytestmark = pytest.mark.slow
LENGTHS = (300, 257, 411, 190, 333)  # input frames: 5 different encoder lengths


def pair(**changes):
    cfg = ModelConfig(dropout=0.0, attention_dropout=0.0, **changes)
    torch.manual_seed(0)
    eager = WavLMEncoder(cfg)
    compiled = WavLMEncoder(cfg)
    compiled.load_state_dict(eager.state_dict())
    compile_blocks(compiled)
    return eager, compiled


def loss_and_grads(model, feats, lengths, mask, seed):
    model.zero_grad()
    gen = torch.Generator().manual_seed(seed)
    hidden = model(feats, lengths, mask=mask, layerdrop_generator=gen).hidden
    loss = hidden.square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                           if p.grad is not None}


@pytest.mark.parametrize("impl,extra,lengths", [
    ("sdpa", {}, LENGTHS), ("reference", {}, LENGTHS[:2]),
    ("sdpa", {"activation_checkpointing": True, "layerdrop": 0.3}, LENGTHS[:2])])
def test_compiled_blocks_match_eager(impl, extra, lengths):
    """Loss within 1e-5 and gradients within 1e-4 of eager (fp32), no graph break, at most
    2 graphs over 5 lengths (the other cases run 2 lengths to keep CI short)."""
    torch._dynamo.reset()
    counters.clear()
    eager, compiled = pair(attention_impl=impl, layerdrop=extra.pop("layerdrop", 0.0), **extra)
    g = torch.Generator().manual_seed(1)
    for step, T in enumerate(lengths):
        feats = torch.randn(3, T, 80, generator=g)
        lengths = torch.tensor([T, T - 37, T // 2])
        mask = torch.rand(3, T, generator=g) < 0.5
        ref_loss, ref_grads = loss_and_grads(eager, feats, lengths, mask, step)
        loss, grads = loss_and_grads(compiled, feats, lengths, mask, step)
        assert (loss - ref_loss).abs() <= 1e-5, T
        assert grads.keys() == ref_grads.keys()
        for name, grad in grads.items():
            assert (grad - ref_grads[name]).abs().max() <= 1e-4, (T, name)
    assert not counters["graph_break"], dict(counters["graph_break"])
    # automatic dynamic: one static graph, then one with T symbolic, shared by the blocks
    assert counters["stats"]["unique_graphs"] <= 2 + int(bool(extra)), dict(counters["stats"])


def test_auto_attention_on_compiled_cpu_blocks_is_sdpa():
    _, compiled = pair(attention_impl="auto")
    assert compiled.attention_impl(torch.device("cpu")) == "sdpa"
    eager = WavLMEncoder(dataclasses.replace(compiled.cfg))
    assert eager.attention_impl(torch.device("cpu")) == "blocked"

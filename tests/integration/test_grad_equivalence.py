"""The loss normalization: one optimizer step with accumulation 4 on 2 ranks (ZeRO-0, fp32)
has exactly the gradient of the same 8 micro-batches taken as one batch.

The gradient is read back from the optimizer state: with AdamW beta1 = 0 the first step's
exp_avg equals the gradient the optimizer received (after accumulation and all-reduce).
"""
from __future__ import annotations

import pytest
import torch

from tests.integration.conftest import launch
from wavlm_ds import engine as E
from wavlm_ds.checkpoint import safe_load
from wavlm_ds.config import load_config
from wavlm_ds.data import TrainLoader
from wavlm_ds.launch import ROOT
from tests.integration.test_trainer import ds_config

pytestmark = pytest.mark.slow

NO_NOISE = ["model.dropout=0.0", "model.attention_dropout=0.0", "model.layerdrop=0.0",
            "data.mix_prob=0.0", "data.num_workers=2", "data.max_duration_s=3.0",
            "training.max_steps=1", "training.eval_every_steps=1000"]


def one_batch_gradient(cfg) -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    micros = []
    for rank in (0, 1):
        loader = TrainLoader(cfg.data, batch_size=2, rank=rank, world_size=2, seed=cfg.training.seed)
        it = iter(loader)
        micros += [E.prepare_micro(next(it), cfg, torch.device("cpu"), 1, i, rank) for i in range(4)]
    T = max(mb.features.shape[1] for mb in micros)
    pad = lambda x: torch.nn.functional.pad(x, (0, 0, 0, T - x.shape[1]) if x.ndim == 3 else (0, T - x.shape[1]))
    feats = torch.cat([pad(mb.features) for mb in micros])
    targets = torch.cat([pad(mb.targets) for mb in micros])
    mask = torch.cat([pad(mb.mask) for mb in micros])
    lengths = torch.cat([mb.frame_lengths for mb in micros])
    torch.manual_seed(E.seed_for(cfg.training.seed, E.DROPOUT, 0))  # rank 0's init is broadcast
    model = E.build_model(cfg)
    loss_sum, _ = model(feats, targets, lengths, mask)
    (loss_sum / mask.sum()).backward()
    return {n: p.grad for n, p in model.named_parameters()}, model


def test_accumulated_two_rank_gradient_equals_one_batch(tiny_corpus, tmp_path):
    ds = ds_config(stage=0, gradient_clipping=0.0)
    ds["bf16"] = {"enabled": False}
    ds.pop("data_types", None)
    ds.pop("scheduler")
    ds["optimizer"]["params"].update(betas=[0.0, 0.98], weight_decay=0.0)
    assert launch(tmp_path, tiny_corpus, NO_NOISE, ds) == 0
    cfg = load_config(ROOT / "configs" / "demo.yaml", NO_NOISE + [
        f"data.sources=[{{name: tiny, shards: {tiny_corpus['train']}}}]"])
    expected, model = one_batch_gradient(cfg)
    state = safe_load(tmp_path / "checkpoints" / "step00000001" / "mp_rank_00_model_states.pt")
    optim = state["optimizer"]
    groups = E.param_groups(model, cfg.training.no_decay_patterns)
    names = {id(p): n for n, p in model.named_parameters()}
    ordered = [names[id(p)] for g in groups for p in g["params"]]
    got = {ordered[i]: s["exp_avg"] for i, s in optim["state"].items()}
    assert set(got) == set(expected)
    for name, grad in expected.items():
        scale = grad.abs().max().clamp(min=1e-12)
        assert torch.allclose(got[name], grad, rtol=1e-4, atol=1e-5 * scale), name

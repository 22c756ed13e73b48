"""DeepSpeed engine overhead: an optimizer step of the engine vs a bare PyTorch loop.

The library behind tools/bench_overhead.py (its docstring has the method): same model,
inputs and precision scheme on both sides, the two loops alternated step by step.
"""
from __future__ import annotations

import json
import os
import statistics

import torch

from wavlm_ds import engine as E
from wavlm_ds.bench.timing import interleaved
from wavlm_ds.config import load_config
from wavlm_ds.launch import ROOT
from wavlm_ds.numerics import check_run


def make_inputs(cfg, micro: int, accum: int, seconds: float) -> list[tuple]:
    """Fixed micro-batches: normalized-feature-like noise, full-length rows, 80% span masks."""
    T = int(seconds * 100)
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(accum):
        feats = torch.randn(micro, T, 80, generator=gen)
        lengths = torch.full((micro,), T, dtype=torch.long)
        mask = E.draw_mask(cfg, lengths, T, E.make_generator("cpu", 0, i))
        out.append((feats, feats.clone(), lengths, mask))
    return out


def ds_config(micro: int, accum: int) -> dict:
    ds = json.loads((ROOT / "ds_configs" / "cpu_smoke.json").read_text())
    ds.update(train_batch_size=micro * accum, train_micro_batch_size_per_gpu=micro,
              gradient_accumulation_steps=accum)
    ds.pop("scheduler")
    return ds


def engine_step(cfg, inputs: list[tuple], accum: int):
    """A closure running one optimizer step of the DeepSpeed engine."""
    eng = E.build_engine(cfg, ds_config(inputs[0][0].shape[0], accum), rank=0)

    def step() -> None:
        for feats, targets, lengths, mask in inputs:
            loss, _ = eng(feats, targets, lengths, mask)
            eng.backward(loss / mask.sum())
            eng.step()
    return step


def bare_step(cfg, inputs: list[tuple], accum: int):
    """A closure running one optimizer step of the bare loop (same precision scheme)."""
    model = E.build_model(cfg).to(torch.bfloat16)
    master = [p.detach().float().clone().requires_grad_(True) for p in model.parameters()]
    groups = E.param_groups(model, cfg.training.no_decay_patterns)
    index = {id(p): i for i, p in enumerate(model.parameters())}
    opt = torch.optim.AdamW([{**g, "params": [master[index[id(p)]] for p in g["params"]]}
                             for g in groups], lr=2e-3, betas=(0.9, 0.98), eps=1e-6,
                            weight_decay=0.01, fused=True)

    def step() -> None:
        for feats, targets, lengths, mask in inputs:
            loss, _ = model(feats, targets, lengths, mask)
            (loss / mask.sum() / accum).backward()
            for p, m in zip(model.parameters(), master):  # fp32 accumulation, as DeepSpeed
                m.grad = p.grad.float() if m.grad is None else m.grad.add_(p.grad.float())
                p.grad = None
        torch.nn.utils.clip_grad_norm_(master, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p, m in zip(model.parameters(), master):
                p.copy_(m)
    return step


def measure_overhead(preset: str, seconds: float, micro: int, accum: int, steps: int,
                     warmup: int) -> dict:
    """Seconds per optimizer step of each loop (one process, rank 0 of 1), their medians,
    the ratio of medians and the median of the per-round ratios."""
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("MASTER_PORT", "29533"))
    E.init_distributed(600)
    cfg = load_config(None, [f"model.preset={preset}", "model.dropout=0.0",
                             "model.layerdrop=0.0", "model.attention_dropout=0.0"])
    inputs = make_inputs(cfg, micro, accum, seconds)
    numerics = check_run(cfg.model, micro, int(seconds * 100), torch.bfloat16,
                         torch.device("cpu"))  # both loops run bf16: a wrong kernel stops here
    print(f"[bench] {numerics.summary()}", flush=True)
    numerics.raise_if_failed()
    torch.manual_seed(0)
    loops = {"bare": bare_step(cfg, inputs, accum)}
    torch.manual_seed(0)
    loops["deepspeed"] = engine_step(cfg, inputs, accum)
    times = interleaved(loops, steps, warmup)
    bare, ds = times["bare"], times["deepspeed"]
    result = {"preset": preset, "micro": micro, "accum": accum, "seconds_per_row": seconds,
              "bare_median_s": statistics.median(bare), "deepspeed_median_s": statistics.median(ds),
              "bare_s": bare, "deepspeed_s": ds, "numerics_check": numerics.summary()}
    result["ratio"] = result["deepspeed_median_s"] / result["bare_median_s"]
    result["median_pair_ratio"] = statistics.median(d / b for d, b in zip(ds, bare))
    return result

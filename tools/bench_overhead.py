"""DeepSpeed engine overhead: time per optimizer step vs a bare PyTorch loop, same model/data.

usage: python tools/bench_overhead.py [--preset base] [--seconds 1] [--micro 1] [--accum 4]
                                      [--steps 3] [--warmup 1] [--threads 2] [--json out.json]

Both sides run one process on the CPU with the same precision scheme: bf16 parameters,
fp32 gradient accumulation, fp32 master weights, AdamW. The engine side is DeepSpeed
(ZeRO-2, bf16, "AdamW" -> FusedAdam) exactly as train.py builds it; the bare side keeps an
fp32 master copy and steps `torch.optim.AdamW(fused=True)` (torch's CPU fused kernel, the
closest CPU equivalent of FusedAdam). Inputs are fixed synthetic features and masks, so the
ratio isolates the engine (features and masking are identical work on both sides).
The two loops alternate step by step (order flipped every round) so that machine noise
hits both alike. Reports the median step time of each, their ratio, and the median of
the per-round ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

from bench_ops import interleaved  # tools/bench_ops.py

from wavlm_ds import engine as E
from wavlm_ds.config import load_config

ROOT = Path(__file__).resolve().parents[1]


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


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="base")
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--micro", type=int, default=1)
    p.add_argument("--accum", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("MASTER_PORT", "29533"))
    E.init_distributed(600)
    cfg = load_config(None, [f"model.preset={args.preset}", "model.dropout=0.0",
                             "model.layerdrop=0.0", "model.attention_dropout=0.0"])
    inputs = make_inputs(cfg, args.micro, args.accum, args.seconds)
    torch.manual_seed(0)
    loops = {"bare": bare_step(cfg, inputs, args.accum)}
    torch.manual_seed(0)
    loops["deepspeed"] = engine_step(cfg, inputs, args.accum)
    times = interleaved(loops, args.steps, args.warmup)
    bare, ds = times["bare"], times["deepspeed"]
    result = {"preset": args.preset, "micro": args.micro, "accum": args.accum,
              "seconds_per_row": args.seconds, "threads": args.threads,
              "bare_median_s": statistics.median(bare), "deepspeed_median_s": statistics.median(ds),
              "bare_s": bare, "deepspeed_s": ds}
    result["ratio"] = result["deepspeed_median_s"] / result["bare_median_s"]
    result["median_pair_ratio"] = statistics.median(d / b for d, b in zip(ds, bare))
    print(f"| loop | median s/step |\n|---|---|\n| bare PyTorch (bf16 + fp32 master, "
          f"AdamW fused) | {result['bare_median_s']:.3f} |\n| DeepSpeed ZeRO-2 bf16 FusedAdam | "
          f"{result['deepspeed_median_s']:.3f} |\n\nratio DeepSpeed / bare = {result['ratio']:.3f} (ratio of medians), "
          f"{result['median_pair_ratio']:.3f} (median of per-round ratios)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

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
import sys
from pathlib import Path

import torch

from wavlm_ds.bench.overhead import measure_overhead


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
    result = measure_overhead(args.preset, args.seconds, args.micro, args.accum, args.steps,
                              args.warmup)
    result["threads"] = args.threads
    print(f"| loop | median s/step |\n|---|---|\n| bare PyTorch (bf16 + fp32 master, "
          f"AdamW fused) | {result['bare_median_s']:.3f} |\n| DeepSpeed ZeRO-2 bf16 FusedAdam | "
          f"{result['deepspeed_median_s']:.3f} |\n\nratio DeepSpeed / bare = {result['ratio']:.3f} "
          f"(ratio of medians), {result['median_pair_ratio']:.3f} (median of per-round ratios)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

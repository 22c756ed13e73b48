"""Time each op of wavlm_ds.ops against what users would otherwise run, in one run.

usage: python tools/bench_ops.py [--only logmel,mask,attention,attention_small,pos_conv]
                                 [--repeats 7] [--threads 1]
                                 [--device cpu|cuda] [--json runs/bench_ops.json]

--device cuda times the same ops on the GPU (each call between two synchronizations, CUDA
events around it): log-Mel (torch.stft path, Triton kernel, torchaudio), the masker, and
attention fwd + bwd in bf16 for reference, blocked, sdpa and flex with
torch.cuda.max_memory_allocated above the inputs.

Medians over --repeats after warm-up, variants interleaved so machine noise hits all alike.
Peak memory (attention) is measured in one subprocess per variant, two ways: the peak of
live tensor bytes over forward + backward above the inputs (wavlm_ds.memory.LiveBytes, as
CUDA's max_memory_allocated), and ru_maxrss after the op minus ru_maxrss after building
the inputs (includes what the allocator caches).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from wavlm_ds.bench.ops import bench_cuda, run_cpu


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", default="logmel,mask,attention")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        result = {"device": torch.cuda.get_device_name(), **bench_cuda(args.repeats)}
        print(json.dumps(result, indent=2))
    else:
        print(f"torch {torch.__version__}, {args.threads} thread(s)")
        result = run_cpu(args.only.split(","), args.repeats, args.threads)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

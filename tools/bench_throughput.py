"""Training throughput of the real trainer step: what train.py does, timed.

usage: python tools/bench_throughput.py [--config configs/demo.yaml]
           [--deepspeed_config ds_configs/cpu_smoke.json] [--set key=value ...]
           [--steps 5] [--warmup 2] [--seconds S] [--lengths-from INDEX | --min-seconds S]
           [--peak-tflops X] [--measure-peak] [--sweep micro=1,2,4 --sweep seconds=2,4]
           [--eval-steps N] [--torch-adam] [--ds-flops-profiler] [--json out.json]
       deepspeed --hostfile hostfiles/localhost ... tools/bench_throughput.py ...  (several ranks)

What is timed and reported: wavlm_ds/bench/throughput.py. The JSON is rewritten after every
sweep point, so a run cut short keeps the rows it finished.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from wavlm_ds.prebuild_ops import use_prebuilt_ops  # noqa: E402

use_prebuilt_ops()  # before DeepSpeed is imported

from wavlm_ds.bench.throughput import run  # noqa: E402
from wavlm_ds.precision import CHOICES  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    p.add_argument("--deepspeed_config", default=str(ROOT / "ds_configs" / "cpu_smoke.json"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seconds", type=float, default=None, help="default: data.max_duration_s")
    p.add_argument("--lengths-from", type=Path, default=None, metavar="INDEX",
                   help="draw row durations from this shard index (index.json)")
    p.add_argument("--min-seconds", type=float, default=None,
                   help="draw row durations uniformly in [min, --seconds] (bucketed, dynamic T)")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--measure-peak", action="store_true",
                   help="CUDA: also measure this GPU's bf16 matmul TFLOP/s and report MFU vs it")
    p.add_argument("--sweep", action="append", default=[], metavar="AXIS=V1,V2")
    p.add_argument("--eval-steps", type=int, default=0,
                   help="also time N no-grad eval micro-batches (after the first) per point")
    p.add_argument("--torch-adam", action="store_true",
                   help="torch's AdamW instead of DeepSpeed's FusedAdam (no JIT-built op)")
    p.add_argument("--ds-flops-profiler", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--precision", choices=CHOICES, default="auto",
                   help="CPU only: bf16 where the CPU computes it natively (auto), or as asked")
    p.add_argument("--local_rank", type=int, default=0, help="set by the deepspeed launcher")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

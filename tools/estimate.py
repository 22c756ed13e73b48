"""Plan a run without hardware: parameters, FLOPs, memory per GPU under ZeRO-0..3,
communication, time, GPU-hours, data rate, and the step count a wall-clock budget buys.

usage: python tools/estimate.py --config configs/wavlm_large_plus.yaml \
           --deepspeed_config ds_configs/a100x128_zero2_bf16.json \
                              ds_configs/a100x128_zero1_bf16.json --gpus 128 \
           [--device A100 | --peak-tflops 312] [--hbm-gib 80] [--mfu 0.35] \
           [--node-gbps 1600] [--comm-overlap 0.5] [--audio-s-per-core-s 1367] \
           [--segment-seconds 16] [--corpus-hours 100000] \
           [--budget-days 21] [--budget-gpu-hours 1.5e6] [--write-steps] [--json PATH] \
           [--measure debug:2:8 --measure base:2:8]

Every figure comes from the config: parameters from the real modules (meta device), FLOPs
from wavlm_ds.model.flops (the counter train.py logs MFU with), memory from
wavlm_ds.plan (first principles; ZeRO-2's model states equal DeepSpeed's
estimate_zero2_model_states_mem_needs, plus the buckets and activations it leaves out),
time per step = FLOPs / (GPUs x peak x MFU) + exposed communication for the optimizer
DeepSpeed selects (wavlm_ds/plan_terms.py; the node fabric defaults to a DGX A100,
8 x 200 Gb/s HDR). The mean segment comes from the sources' sample indexes (durations
cropped at data.max_duration_s, below data.min_duration_s dropped), else --segment-seconds,
else data.max_duration_s (flagged). The corpus size is read from the sources'
index.json files when they exist, else --corpus-hours. With --budget-days the tool
derives scheduler.params.total_num_steps (rounded down to 1000) and --write-steps writes it
into each DeepSpeed JSON. Several DeepSpeed JSONs are printed side by side (the first in
full). Disagreeing inputs (a stated step count or GPU-hour budget that
does not match the budget in days) are flagged. --measure PRESET:MICRO:SECONDS runs one
forward + backward of that preset here on the CPU (bf16) and prints the activation
estimate next to the measured peak of live tensor bytes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wavlm_ds.config import ConfigError, load_config
from wavlm_ds.metrics import PEAK_TFLOPS
from wavlm_ds.plan import DECODE_AUDIO_S_PER_CORE_S, Cluster
from wavlm_ds.plan_report import (compare_activations, plan_all, print_activations,
                                  print_comparison, print_plan, write_steps)
from wavlm_ds.plan_terms import Fabric


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="configs/wavlm_large_plus.yaml")
    p.add_argument("--deepspeed_config", nargs="+",
                   default=["ds_configs/a100x128_zero2_bf16.json",
                            "ds_configs/a100x128_zero1_bf16.json"],
                   help="one or more DeepSpeed JSONs (printed side by side)")
    p.add_argument("--gpus", type=int, default=128)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--device", default="A100", help=f"peak table: {', '.join(PEAK_TFLOPS)}")
    p.add_argument("--peak-tflops", type=float, default=None, help="overrides --device")
    p.add_argument("--hbm-gib", type=float, default=80.0)
    p.add_argument("--mfu", type=float, default=0.35, help="assumed model FLOPs utilization")
    p.add_argument("--segment-seconds", type=float, default=None,
                   help="mean segment when the sources have no sample index (default: "
                        "data.max_duration_s)")
    p.add_argument("--node-gbps", type=float, default=Fabric.node_gbps,
                   help="inter-node bandwidth per node (default: DGX A100, 8 x 200 Gb/s HDR)")
    p.add_argument("--comm-overlap", type=float, default=Fabric.overlap,
                   help="fraction of the gradient reduction hidden behind backward")
    p.add_argument("--audio-s-per-core-s", type=float, default=DECODE_AUDIO_S_PER_CORE_S,
                   help="measured decode rate (tools/bench_data.py)")
    p.add_argument("--corpus-hours", type=float, default=100_000.0,
                   help="used when the sources have no readable index.json")
    p.add_argument("--budget-days", type=float, default=None)
    p.add_argument("--budget-gpu-hours", type=float, default=None)
    p.add_argument("--write-steps", action="store_true",
                   help="write the budget's total_num_steps into --deepspeed_config")
    p.add_argument("--measure", action="append", default=[], metavar="PRESET:MICRO:SECONDS")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if not 0 < args.mfu <= 1:
        p.error(f"--mfu {args.mfu}: must be in (0, 1]")
    if args.write_steps and args.budget_days is None:
        p.error("--write-steps needs --budget-days")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    peak = args.peak_tflops if args.peak_tflops is not None else PEAK_TFLOPS.get(args.device)
    try:
        cfg = load_config(args.config)
        configs = [json.loads(Path(path).read_text()) for path in args.deepspeed_config]
        if peak is None:
            print(f"estimate: unknown device {args.device!r} (known: {', '.join(PEAK_TFLOPS)});"
                  " pass --peak-tflops; carrying on without time figures")
        plans = plan_all(cfg, configs, Cluster(args.gpus, args.gpus_per_node, peak, args.hbm_gib,
                                               args.mfu),
                         Fabric(args.node_gbps, args.comm_overlap), args.segment_seconds,
                         args.corpus_hours, budget_days=args.budget_days,
                         budget_gpu_hours=args.budget_gpu_hours,
                         audio_s_per_core_s=args.audio_s_per_core_s)
    except FileNotFoundError as err:
        print(f"estimate: error: {err.filename}: no such file", file=sys.stderr)
        return 2
    except (ConfigError, json.JSONDecodeError) as err:
        print(f"estimate: error: {err}", file=sys.stderr)
        return 2
    print_plan(plans[0], args.config, args.deepspeed_config[0], args.hbm_gib,
               plans[0]["corpus_hours_source"])
    if len(plans) > 1 and all("time" in p for p in plans):
        print_comparison(plans, [Path(n).stem for n in args.deepspeed_config])
    for path, result in zip(args.deepspeed_config, plans):
        if args.write_steps and "derived_total_num_steps" in result.get("budget", {}):
            steps = result["budget"]["derived_total_num_steps"]
            old = write_steps(Path(path), steps)
            print(f"\nwrote scheduler.params.total_num_steps {old} -> {steps} into {path}")
    result = dict(plans[0], side_by_side=dict(zip(args.deepspeed_config, plans)))
    if args.measure:
        result["measured"] = compare_activations(args.measure, cfg)
        print_activations(result["measured"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

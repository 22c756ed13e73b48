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
import dataclasses
import json
import re
import sys
from pathlib import Path

from wavlm_ds.config import ConfigError, load_config
from wavlm_ds.data.index import sources_hours
from wavlm_ds.metrics import PEAK_TFLOPS
from wavlm_ds.plan import (DECODE_AUDIO_S_PER_CORE_S, GiB, Cluster, activation_bytes,
                           measure_activations, plan)
from wavlm_ds.plan_terms import Fabric, segment_mean
from wavlm_ds.presets import get_preset

STEPS_RE = re.compile(r'("total_num_steps"\s*:\s*)(\d+)')


def corpus_hours(cfg, fallback: float | None) -> tuple[float | None, str]:
    """Hours of the training sources from their indexes, else the --corpus-hours figure."""
    total, missing = sources_hours(cfg.data.sources)
    if not missing:
        return total, "shard indexes"
    return fallback, (f"--corpus-hours (no index for {', '.join(missing)})" if fallback
                      else "unknown")


def segment_seconds(cfg, given: float | None) -> tuple[float, str]:
    """Mean training segment: from the sources' sample indexes, else --segment-seconds,
    else data.max_duration_s; with where it came from."""
    mean, missing, _ = segment_mean(cfg.data.sources, cfg.data.max_duration_s,
                                    cfg.data.min_duration_s)
    if mean is not None and not missing:
        return mean, "sample indexes"
    if given:
        return given, "--segment-seconds"
    return cfg.data.max_duration_s, (f"data.max_duration_s: NO sample index for "
                                     f"{', '.join(missing)}; every segment assumed full length")


def write_steps(path: Path, steps: int) -> int:
    """Set scheduler.params.total_num_steps in place, keeping the file's layout."""
    text = path.read_text()
    old = json.loads(text).get("scheduler", {}).get("params", {}).get("total_num_steps")
    if old is None or len(STEPS_RE.findall(text)) != 1:
        raise ConfigError(f"{path}: needs exactly one scheduler.params.total_num_steps to update")
    path.write_text(STEPS_RE.sub(lambda m: f"{m.group(1)}{steps}", text))
    return int(old)


def gib(x: float) -> str:
    return f"{x / GiB:,.2f} GiB"


def print_plan(p: dict, args: argparse.Namespace, source: str) -> None:
    b, seg, fl = p["batch"], p["segment"], p["flops"]
    print(f"\n## Plan: {args.config} + {args.deepspeed_config[0]} on {b['gpus']} GPUs "
          f"({b['nodes']} nodes)\n")
    rows = [
        ("parameters", f"{p['parameters'] / 1e6:,.1f} M (largest block "
                       f"{p['largest_block_parameters'] / 1e6:,.1f} M)"),
        ("batch", f"{b['global']} segments = micro {b['micro']} x accumulation "
                  f"{b['accumulation']} x {b['gpus']} GPUs"),
        ("segment", f"{seg['seconds']:.3g} s ({p['segment_source']}) = {seg['input_frames']} "
                    f"log-Mel frames = {seg['encoder_frames']} encoder frames"),
        ("audio per step", f"{p['audio_hours_per_step']:.2f} h"),
        ("training FLOPs", f"{fl['train_per_encoder_frame'] / 1e9:.2f} GFLOP per encoder frame, "
                           f"{fl['train_per_step'] / 1e15:.2f} PFLOP per step"),
    ]
    if "time" in p:
        t = p["time"]
        rows += [("time per step", f"{t['step_s']:.3f} s = compute {t['compute_s']:.3f} s at "
                                   f"{t['mfu']:.0%} MFU (assumed) of {t['peak_tflops']:g} TFLOP/s "
                                   f"+ exposed communication {t['exposed_comm_s']:.3f} s "
                                   f"({t['step_s_at_100pct_mfu']:.3f} s at 100%: the floor)")]
        c = p["checkpoint"]
        rows += [("checkpoint", f"{c['bytes'] / 1e9:.1f} GB; a save hashes {c['save_hashed'] / 1e9:.1f}"
                                f" GB (each file once, by its writer); a resume hashes "
                                f"{c['resume_hashed'] / 1e9:.1f} GB on rank 0 (was "
                                f"{c['resume_hashed_before'] / 1e12:.2f} TB: every file twice on "
                                f"every rank) and loads {c['resume_loaded'] / 1e9:.0f} GB in all")]
        d = p["data_rate"]
        rows += [("data rate", f"{d['audio_s_per_s_per_node']:,.0f} audio s/s per node = "
                               f"{d['cores_per_node']:.1f} cores at the measured "
                               f"{d['audio_s_per_core_s']:g} audio s per core-s (bench_data)")]
    if "epoch" in p:
        e = p["epoch"]
        rows += [("one epoch", f"{e['corpus_hours']:,.0f} h ({source}) = {e['steps']:,.0f} steps"
                               f" = {e['days']:.2f} days")]
    if "schedule" in p:
        s = p["schedule"]
        ep = f", {s['epochs']:.1f} epochs" if s["epochs"] is not None else ""
        rows += [("schedule (total_num_steps)", f"{s['total_num_steps']:,} steps = "
                  f"{s['days']:.1f} days = {s['gpu_hours']:,.0f} GPU-hours, "
                  f"{s['audio_hours']:,.0f} h of audio{ep}")]
    if "budget" in p and "derived_total_num_steps" in p["budget"]:
        bd = p["budget"]
        ep = f" ({bd['epochs']:,.0f} epochs of the corpus)" if bd["epochs"] else ""
        rows += [("budget", f"{bd['days']:g} days x {b['gpus']} GPUs = {bd['gpu_hours']:,.0f} "
                            f"GPU-hours -> total_num_steps {bd['derived_total_num_steps']:,}{ep}")]
    print("| figure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")

    stage = p["memory_zero_stage"]
    print(f"\n### Memory per GPU (bf16 + fp32 master/Adam/grad accumulation; micro {b['micro']}"
          f" x {seg['seconds']:g} s; the config uses ZeRO-{stage})\n")
    print("| term | ZeRO-0 | ZeRO-1 | ZeRO-2 | ZeRO-3 |\n|---|---|---|---|---|")
    mem = p["memory"]
    terms = list(dict.fromkeys(k for st in mem.values() for k in st["model_states"]))
    for term in terms:
        print(f"| {term} | " + " | ".join(gib(mem[st]["model_states"].get(term, 0))
                                          for st in range(4)) + " |")
    print("| model states (ZeRO-2 = DeepSpeed's estimate_zero2 formula: "
          f"{gib(p['deepspeed_zero2_formula_gpu_bytes'])}) | "
          + " | ".join(gib(sum(mem[st]["model_states"].values())) for st in range(4)) + " |")
    print("| reduce + all-gather buckets (left out by that formula) | "
          + " | ".join(gib(sum(mem[st]["buffers"].values())) for st in range(4)) + " |")
    for ck, label in ((False, "activations, no checkpointing"), (True, "activations, checkpointing")):
        print(f"| {label} | " + " | ".join(gib(mem[st]["activations"][ck]) for st in range(4)) + " |")
    for ck, label in ((False, "**total**, no checkpointing"), (True, "**total**, checkpointing")):
        print(f"| {label} | " + " | ".join(gib(mem[st]["total"][ck]) for st in range(4)) + " |")
    print(f"\nHBM {args.hbm_gib:g} GiB per GPU; allocator fragmentation and the CUDA context "
          "(~1-2 GiB) come on top.")
    for w in p["warnings"]:
        print(f"WARNING: {w}")


def print_comparison(plans: list[dict], names: list[str]) -> None:
    """The configs side by side: optimizer, communication, step time, memory, schedule."""
    rows = [("ZeRO stage / optimizer DeepSpeed selects",
             lambda p: f"{p['memory_zero_stage']} / "
                       f"{p['communication'][p['memory_zero_stage']]['optimizer']}"),
            ("gradient reduction", lambda p: _comm(p)["gradient_op"]),
            ("gradient bytes per GPU / per node", lambda p: f"{_comm(p)['gradient_bytes_per_gpu'] / 1e9:.2f}"
             f" / {_comm(p)['gradient_bytes_per_node'] / 1e9:.2f} GB"),
            ("parameter all-gather per GPU / per node", lambda p: f"{_comm(p)['parameter_bytes_per_gpu'] / 1e9:.2f}"
             f" / {_comm(p)['parameter_bytes_per_node'] / 1e9:.2f} GB"),
            ("communication (units of S, seconds)", lambda p: f"{_comm(p)['units_of_S']:g} S, "
             f"{_comm(p)['gradient_s'] + _comm(p)['parameter_s']:.3f} s"),
            ("exposed communication", lambda p: f"{p['time']['exposed_comm_s']:.3f} s"),
            ("step time", lambda p: f"{p['time']['step_s']:.3f} s"),
            ("memory per GPU (checkpointing off)",
             lambda p: gib(p["memory"][p["memory_zero_stage"]]["total"][False])),
            ("budget total_num_steps", lambda p: f"{p.get('budget', {}).get('derived_total_num_steps', '-'):,}"),
            ("schedule days (its total_num_steps)", lambda p: f"{p.get('schedule', {}).get('days', 0):.1f}")]
    c = _comm(plans[0])
    print(f"\n### Side by side (S = {c['S_bytes'] / 1e9:.2f} GB of {c['dtype']} gradients; node fabric "
          f"{c['node_gbps']:g} Gb/s, {c['overlap']:.0%} of the gradient reduction overlapped)\n")
    print("| figure | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for label, cell in rows:
        print(f"| {label} | " + " | ".join(cell(p) for p in plans) + " |")


def _comm(p: dict) -> dict:
    return p["communication"][p["memory_zero_stage"]]


def measure(specs: list[str], cfg) -> list[dict]:
    """Activation estimate (CPU kernels, bf16) vs measured peak live bytes, per spec."""
    rows = []
    for spec in specs:
        try:
            preset, micro, seconds = spec.split(":")
            model = dataclasses.replace(get_preset(preset), attention_dropout=0.0,
                                        dropout=cfg.model.dropout)
            micro, T_in = int(micro), round(float(seconds) * 100)
        except (ValueError, KeyError) as err:
            print(f"--measure {spec}: expected PRESET:MICRO:SECONDS with a known preset ({err});"
                  " skipped")
            continue
        for ckpt in (False, True):
            m = dataclasses.replace(model, activation_checkpointing=ckpt)
            est = activation_bytes(m, micro, T_in, 2, ckpt, device="cpu")
            try:
                got = measure_activations(dataclasses.replace(cfg, model=m), micro, T_in)
            except RuntimeError as err:  # e.g. out of memory at this point: say so, go on
                print(f"--measure {spec} (checkpointing={ckpt}): failed: {err}")
                continue
            rows.append({"preset": preset, "micro": micro, "seconds": float(seconds),
                         "checkpointing": ckpt, "estimate_peak": est["peak"],
                         "measured_peak": got["peak"], "estimate_saved": est["saved"],
                         "measured_saved": got["saved"], "ratio": est["peak"] / got["peak"]})
    if rows:
        print("\n### Activation estimate vs measured (this CPU, bf16, blocked attention)\n")
        print("| preset | micro x s | checkpointing | saved est / meas (MiB) | peak est / meas"
              " (MiB) | est / meas |\n|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['preset']} | {r['micro']} x {r['seconds']:g} | {r['checkpointing']} | "
                  f"{r['estimate_saved'] / 2**20:.1f} / {r['measured_saved'] / 2**20:.1f} | "
                  f"{r['estimate_peak'] / 2**20:.1f} / {r['measured_peak'] / 2**20:.1f} | "
                  f"{r['ratio']:.3f} |")
    return rows


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
    try:
        cfg = load_config(args.config)
        configs = [json.loads(Path(path).read_text()) for path in args.deepspeed_config]
    except FileNotFoundError as err:
        print(f"estimate: error: {err.filename}: no such file", file=sys.stderr)
        return 2
    except (ConfigError, json.JSONDecodeError) as err:
        print(f"estimate: error: {err}", file=sys.stderr)
        return 2
    peak = args.peak_tflops if args.peak_tflops is not None else PEAK_TFLOPS.get(args.device)
    if peak is None:
        print(f"estimate: unknown device {args.device!r} (known: {', '.join(PEAK_TFLOPS)}); "
              "pass --peak-tflops; carrying on without time figures")
    cluster = Cluster(args.gpus, args.gpus_per_node, peak, args.hbm_gib, args.mfu)
    hours, source = corpus_hours(cfg, args.corpus_hours)
    seconds, seconds_source = segment_seconds(cfg, args.segment_seconds)
    fabric = Fabric(args.node_gbps, args.comm_overlap)
    try:
        plans = [plan(cfg, ds, cluster, seconds, hours, budget_days=args.budget_days,
                      budget_gpu_hours=args.budget_gpu_hours, fabric=fabric,
                      audio_s_per_core_s=args.audio_s_per_core_s) for ds in configs]
    except ConfigError as err:
        print(f"estimate: error: {err}", file=sys.stderr)
        return 2
    for result in plans:
        result.update(corpus_hours_source=source, segment_source=seconds_source)
    print_plan(plans[0], args, source)
    if len(plans) > 1 and all("time" in p for p in plans):
        print_comparison(plans, [Path(n).stem for n in args.deepspeed_config])
    for path, result in zip(args.deepspeed_config, plans):
        if args.write_steps and "derived_total_num_steps" in result.get("budget", {}):
            steps = result["budget"]["derived_total_num_steps"]
            old = write_steps(Path(path), steps)
            print(f"\nwrote scheduler.params.total_num_steps {old} -> {steps} into {path}")
    result = dict(plans[0], side_by_side=dict(zip(args.deepspeed_config, plans)))
    if args.measure:
        result["measured"] = measure(args.measure, cfg)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

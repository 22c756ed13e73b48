"""What tools/estimate.py reads and prints around wavlm_ds.plan.

The inputs read from the sources (corpus hours from the index.json files, the mean segment
from the sample indexes, each with where it came from), the Markdown tables of a plan and of
several DeepSpeed configs side by side, the activation estimate checked against a measured
forward + backward, and `write_steps`, which puts a budget's total_num_steps into a
DeepSpeed JSON without touching the rest of its layout.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from wavlm_ds.config import ConfigError, RunConfig
from wavlm_ds.data.index import sources_hours
from wavlm_ds.plan import GiB, Cluster, activation_bytes, measure_activations, plan
from wavlm_ds.plan_terms import Fabric, segment_mean
from wavlm_ds.presets import get_preset

STEPS_RE = re.compile(r'("total_num_steps"\s*:\s*)(\d+)')


def corpus_hours(cfg: RunConfig, fallback: float | None) -> tuple[float | None, str]:
    """Hours of the training sources from their indexes, else the --corpus-hours figure."""
    total, missing = sources_hours(cfg.data.sources)
    if not missing:
        return total, "shard indexes"
    return fallback, (f"--corpus-hours (no index for {', '.join(missing)})" if fallback
                      else "unknown")


def segment_seconds(cfg: RunConfig, given: float | None) -> tuple[float, str]:
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


def print_plan(p: dict, config: str, ds_config: str, hbm_gib: float, source: str) -> None:
    b, seg, fl = p["batch"], p["segment"], p["flops"]
    print(f"\n## Plan: {config} + {ds_config} on {b['gpus']} GPUs "
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
    print(f"\nHBM {hbm_gib:g} GiB per GPU; allocator fragmentation and the CUDA context "
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


def compare_activations(specs: list[str], cfg: RunConfig) -> list[dict]:
    """Activation estimate (CPU kernels, bf16) vs measured peak live bytes, per
    PRESET:MICRO:SECONDS spec; a spec that cannot run is said and skipped."""
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
    return rows


def print_activations(rows: list[dict]) -> None:
    if not rows:
        return
    print("\n### Activation estimate vs measured (this CPU, bf16, blocked attention)\n")
    print("| preset | micro x s | checkpointing | saved est / meas (MiB) | peak est / meas"
          " (MiB) | est / meas |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['micro']} x {r['seconds']:g} | {r['checkpointing']} | "
              f"{r['estimate_saved'] / 2**20:.1f} / {r['measured_saved'] / 2**20:.1f} | "
              f"{r['estimate_peak'] / 2**20:.1f} / {r['measured_peak'] / 2**20:.1f} | "
              f"{r['ratio']:.3f} |")


def plan_all(cfg: RunConfig, configs: list[dict], cluster: Cluster, fabric: Fabric,
             segment_given: float | None, corpus_fallback: float | None, **plan_kwargs
             ) -> list[dict]:
    """plan() for each DeepSpeed config, with the segment and corpus size read from the
    sources (or the fallbacks) and where each came from."""
    hours, source = corpus_hours(cfg, corpus_fallback)
    seconds, seconds_source = segment_seconds(cfg, segment_given)
    plans = [plan(cfg, ds, cluster, seconds, hours, fabric=fabric, **plan_kwargs)
             for ds in configs]
    for result in plans:
        result.update(corpus_hours_source=source, segment_source=seconds_source)
    return plans

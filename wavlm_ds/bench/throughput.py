"""Training throughput of the real trainer step: what train.py does, timed.

Each optimizer step runs `wavlm_ds.engine.optimizer_step`, the function train.py's loop
calls: log-Mel, mixing (with the noise stream when the config has one: the real noise
loader in its DataLoader workers; else synthetic noise crops), the span mask, the global
masked count, forward + backward of each micro-batch through the DeepSpeed engine, the
optimizer, the totals all-reduce, and the trainer's one host sync (the stop flag). Row
lengths are drawn from a shard index's durations (`lengths_from`: per-sample durations
where the index has them, else each shard's mean), or uniformly in [min_seconds, seconds]
(the bucketed lengths of real data: T changes from batch to batch, so a compiled model
runs its dynamic-T graph); cropped at data.max_duration_s, dropped below
data.min_duration_s, and bucketed like the loader (data.bucket_batches batches sorted
together), so padding is what the trainer sees. Default: full-length rows of `seconds`.

After `warmup` steps, the median of `steps` is reported: samples/s, seconds of audio/s,
encoder frames/s (valid, all ranks), model and hardware TFLOP/s per device (analytic,
wavlm_ds/model/flops.py, with the layerdrop draws of each timed step), MFU and HFU against
the datasheet peak (wavlm_ds/metrics.py) and, with measure_peak on CUDA, against this GPU's
measured bf16 matmul rate; peak memory (CUDA max_memory_allocated; CPU peak RSS); data time
(batch making, outside the step, as the loader's prefetch is); optionally the no-grad eval
forward (`eval_steps`: what train.py's evaluate runs per micro-batch, its own graph when
compiled). The analytic count is cross-checked against FlopCounterMode on the meta device
(shapes only, no arithmetic: the 600M model costs nothing to count), optionally against
DeepSpeed's flops profiler. Rows are written to the JSON one at a time, so a run cut short
keeps the rows it finished; a sweep point that fails (e.g. out of memory) is reported as
such and the sweep goes on.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import random
import resource
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from wavlm_ds import engine as E
from wavlm_ds.config import check_batch_arithmetic, load_config
from wavlm_ds.data.index import read_index
from wavlm_ds.jsonio import write_json_atomic
from wavlm_ds.metrics import device_peak_tflops, mfu
from wavlm_ds.model import WavLMEncoder
from wavlm_ds.model.flops import forward_flops
from wavlm_ds.numerics import check_for_run
from wavlm_ds.prebuild_ops import warn_if_jit_build
from wavlm_ds.precision import apply_precision, choose_cpu_precision

SR = 16000


def speech_like(n: int, gen: torch.Generator) -> torch.Tensor:
    """One row of harmonic 'speech' with noise, (n,) fp32."""
    t = torch.arange(n) / SR
    f0 = 100 + 100 * torch.rand(1, generator=gen)
    audio = sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, 8))
    return (0.1 * audio + 0.01 * torch.randn(n, generator=gen)).float()


def make_batch(seconds: list[float], gen: torch.Generator) -> dict:
    """A batch dict like the loader's, rows padded to the longest."""
    lengths = torch.tensor([int(s * SR) for s in seconds])
    audio = torch.zeros(len(seconds), int(lengths.max()))
    for i, n in enumerate(lengths.tolist()):
        audio[i, :n] = speech_like(n, gen)
    return {"audio": audio, "lengths": lengths, "valid": torch.ones(len(seconds), dtype=torch.bool),
            "keys": [""] * len(seconds), "epoch": 0}


def index_durations(path: Path) -> list[float]:
    """Per-sample durations (s) of a shard index: the index's own per-sample list where it
    has one, else each shard's mean duration repeated for its samples."""
    raw = json.loads(Path(path).read_text())
    out: list[float] = []
    for entry, info in zip(raw["shards"], read_index(Path(path)).shards):
        per_sample = entry.get("durations_s")
        out += per_sample or [info.hours * 3600 / max(info.num_samples, 1)] * info.num_samples
    return out


class LengthSampler:
    """Row durations as the trainer would see them: drawn, cropped, bucketed into batches."""

    def __init__(self, cfg, micro: int, seconds: float, args, seed: int) -> None:
        d = cfg.data
        self.micro, self.window, self.rng = micro, d.bucket_batches, random.Random(seed)
        if args.lengths_from:
            pool = [min(x, d.max_duration_s) for x in index_durations(args.lengths_from)
                    if x >= d.min_duration_s]
            if not pool:
                raise SystemExit(f"--lengths-from {args.lengths_from}: no sample of at least "
                                 f"data.min_duration_s={d.min_duration_s} s")
            self.draw = lambda: self.rng.choice(pool)
        elif args.min_seconds is not None:
            self.draw = lambda: self.rng.uniform(args.min_seconds, seconds)
        else:
            self.draw = lambda: seconds
        self.pending: list[list[float]] = []

    def next(self) -> list[float]:
        if not self.pending:
            rows = sorted(self.draw() for _ in range(self.micro * self.window))
            self.pending = [rows[i:i + self.micro] for i in range(0, len(rows), self.micro)]
            self.rng.shuffle(self.pending)
        return self.pending.pop()


def noise_batches(cfg, micro: int, rank: int, world: int, gen: torch.Generator):
    """The noise stream: the real noise loader (DataLoader workers) when the config names
    noise shards, else synthetic noise crops; None when mixing is off."""
    if cfg.data.mix_prob == 0:
        return itertools.repeat(None)
    loader = E.noise_loader(cfg, micro, rank, world)
    if loader is not None:
        return iter(loader)
    return (make_batch([2.0] * micro, gen) for _ in itertools.count())


@dataclasses.dataclass
class Timed:
    """One timed optimizer step: its number (which seeds its layerdrop draws), data and
    step seconds, and the trainer's step result."""
    step: int
    data_s: float
    step_s: float
    result: "E.StepResult"


def one_step(engine, cfg, sampler: LengthSampler, noise, accum: int, step: int, rank: int,
             world: int, gen: torch.Generator) -> Timed:
    """The step timed exactly as train.py's loop runs it."""
    t0 = time.perf_counter()
    batches = [make_batch(sampler.next(), gen) for _ in range(accum)]
    noises = [next(noise) for _ in range(accum)]
    t1 = time.perf_counter()
    result = E.optimizer_step(engine, cfg, batches, noises, step, rank, world, False)
    result.total("stop").item()  # the trainer's one sync per step
    return Timed(step, t1 - t0, time.perf_counter() - t1, result)


def time_eval(engine, cfg, sampler: LengthSampler, gen: torch.Generator, n: int,
              rank: int) -> dict:
    """Seconds per no-grad eval micro-batch as train.py's evaluate runs it (features, mask,
    forward): the first call (a compiled model compiles its no-grad graph there) and the
    median of the next n."""
    engine.eval()
    times = []
    with torch.no_grad():
        for i in range(n + 1):
            batch = make_batch(sampler.next(), gen)
            t0 = time.perf_counter()
            mb = E.prepare_micro(batch, cfg, engine.device, step=0, micro=i, rank=rank, train=False)
            loss_sum, _ = engine(mb.features, mb.targets, mb.frame_lengths, mb.mask, None,
                                 mb.extras)
            loss_sum.item()  # wait for the device
            times.append(time.perf_counter() - t0)
    engine.train()
    return {"eval_first_s": times[0], "eval_micro_s": statistics.median(times[1:])}


def measured_peak_tflops(device: torch.device) -> float | None:
    """This GPU's dense bf16 matmul rate (8192^3, median of 10 after warm-up), TFLOP/s."""
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    times = []
    for i in range(13):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) / 1e3)
    return 2 * 8192 ** 3 / statistics.median(times) / 1e12


def meta_flop_counter_ratio(model_cfg, micro: int, frames: int) -> float:
    """FlopCounterMode's forward FLOPs / the analytic count at this micro-batch shape, on the
    meta device (shapes only: seconds for the 600M model), on the explicit-bias attention
    path (FlopCounterMode counts no FLOPs for fused attention kernels)."""
    model_cfg = dataclasses.replace(model_cfg, attention_impl="reference", compile=False)
    with torch.device("meta"):
        model = WavLMEncoder(model_cfg).eval()
    features = torch.empty(micro, frames, 80, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(features, torch.full((micro,), frames, device="meta"))
    return counter.get_total_flops() / forward_flops(model_cfg, frames, micro)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def ds_flops_profiler(engine, cfg, micro: int, seconds: float, gen: torch.Generator) -> float:
    """DeepSpeed's flops profiler on one forward; returns its total / the analytic count."""
    from deepspeed.profiling.flops_profiler import FlopsProfiler
    mb = E.prepare_micro(make_batch([seconds] * micro, gen), cfg, engine.device, 0, 0, 0)
    prof = FlopsProfiler(engine.module.encoder)
    engine.module.eval()
    prof.start_profile()
    with torch.no_grad():
        engine.module.encoder(mb.features, mb.frame_lengths, mb.mask)
    flops = prof.get_total_flops()
    prof.end_profile()
    engine.module.train()
    return flops / forward_flops(cfg.model, mb.features.shape[1], micro)


def padding_fraction(result: "E.StepResult") -> float:
    """Share of this rank's input frames (rows x padded length) that are padding."""
    padded = sum(mb.features.shape[0] * mb.features.shape[1] for mb in result.micros)
    valid = sum(int(mb.host_frame_lengths[mb.valid].sum()) for mb in result.micros)
    return 1 - valid / padded


def point_ds_config(ds: dict, micro: int, world: int, torch_adam: bool) -> dict:
    """The DeepSpeed JSON for one sweep point: this micro-batch, a constant lr (the schedule
    does not change the work), and torch's AdamW instead of FusedAdam if asked (no JIT op)."""
    ds = json.loads(json.dumps(ds))
    ds["train_micro_batch_size_per_gpu"] = micro
    ds["train_batch_size"] = micro * ds["gradient_accumulation_steps"] * world
    ds.pop("scheduler", None)
    if torch_adam:
        ds.setdefault("optimizer", {"type": "AdamW", "params": {}})
        ds["optimizer"].setdefault("params", {})["torch_adam"] = True
    return ds


def summarize(cfg, runs: list[Timed], micro: int, accum: int, world: int, peak: float | None,
              measured_peak: float | None) -> dict:
    """The row's figures from the timed steps: medians, FLOP rates, MFU."""
    step_s = statistics.median(r.step_s for r in runs)
    flops = [E.step_flops(cfg, r.result, r.step) for r in runs]  # each step's own layerdrop
    totals = [dict(zip(E.TOTALS, r.result.totals.tolist())) for r in runs]
    audio = statistics.median(t["audio_seconds"] for t in totals)
    frames = statistics.median(t["frames"] for t in totals) / cfg.model.frame_stack
    model_tflops = statistics.median(f[0] for f in flops) / step_s / 1e12
    hw_tflops = statistics.median(f[1] for f in flops) / step_s / 1e12
    return {"step_s": step_s, "data_s": statistics.median(r.data_s for r in runs),
            "samples_per_s": micro * accum * world / step_s, "audio_s_per_s": audio / step_s,
            "audio_s_per_device_s": audio / step_s / world, "frames_per_s": frames / step_s,
            "padding_fraction": statistics.median(padding_fraction(r.result) for r in runs),
            "tflops_per_device": model_tflops, "hardware_tflops_per_device": hw_tflops,
            "mfu": mfu(model_tflops, peak), "hfu": mfu(hw_tflops, peak), "peak_tflops": peak,
            "measured_peak_tflops": measured_peak,
            "mfu_vs_measured": mfu(model_tflops, measured_peak)}


def bench_point(cfg, ds: dict, micro: int, seconds: float, args, rank: int, world: int,
                measured_peak: float | None) -> dict:
    ds = point_ds_config(ds, micro, world, args.torch_adam)
    _, micro, accum = check_batch_arithmetic(ds, world, "bench_throughput")
    engine = E.build_engine(cfg, ds, rank)
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    gen = torch.Generator().manual_seed(1000 + rank)
    sampler = LengthSampler(cfg, micro, seconds, args, 2000 + rank)
    noise = noise_batches(cfg, micro, rank, world, gen)
    t0 = time.perf_counter()
    runs = [one_step(engine, cfg, sampler, noise, accum, s, rank, world, gen)
            for s in range(1, args.warmup + args.steps + 1)]
    row = {"micro": micro, "accum": accum, "world": world, "seconds": seconds,
           "lengths": str(args.lengths_from or ("uniform" if args.min_seconds else "full")),
           "min_seconds": args.min_seconds, "compile": cfg.model.compile,
           "attention_impl": cfg.model.attention_impl,
           "optimizer": "torch AdamW (torch_adam)" if args.torch_adam else "DeepSpeed FusedAdam",
           "first_step_s": runs[0].step_s,
           **summarize(cfg, runs[args.warmup:], micro, accum, world,
                       device_peak_tflops(engine.device, args.peak_tflops), measured_peak),
           "peak_memory_gib": peak_memory_bytes(engine.device) / 2**30,
           "memory_method": "cuda max_memory_allocated" if engine.device.type == "cuda"
           else "process peak RSS (getrusage)"}
    if args.eval_steps:
        row.update(time_eval(engine, cfg, sampler, gen, args.eval_steps, rank))
    frames = 1 + int(seconds * SR) // 160  # of the longest row
    row["flop_counter_ratio"] = meta_flop_counter_ratio(cfg.model, micro, frames)
    if args.ds_flops_profiler:
        row["ds_flops_profiler_ratio"] = ds_flops_profiler(engine, cfg, micro, seconds, gen)
    row["wall_s"] = time.perf_counter() - t0
    del engine
    return row


def sweep_points(args, default_micro: int, default_seconds: float) -> list[tuple[int, float]]:
    axes = {"micro": [default_micro], "seconds": [default_seconds]}
    for item in args.sweep:
        key, _, values = item.partition("=")
        if key not in axes or not values:
            raise SystemExit(f"--sweep {item}: use micro=1,2,4 or seconds=2,4")
        axes[key] = [int(v) if key == "micro" else float(v) for v in values.split(",")]
    return list(itertools.product(axes["micro"], axes["seconds"]))


def markdown(rows: list[dict], device: str) -> str:
    lines = [f"device: {device}", "",
             "| micro x accum x ranks | s/row (max) | lengths | compile | attention | s/step | "
             "samples/s | audio s/s | padding | model TFLOP/s/dev | MFU | HFU | MFU vs measured "
             "peak | peak mem GiB | data s | FLOPs vs FlopCounterMode |", "|---" * 16 + "|"]
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['micro']} | {r['seconds']} | failed: {r['error']} |" + " |" * 13)
            continue
        lines.append(
            f"| {r['micro']} x {r['accum']} x {r['world']} | {r['seconds']:g} | {r['lengths']} | "
            f"{r['compile']} | {r['attention_impl']} | {r['step_s']:.3f} | "
            f"{r['samples_per_s']:.2f} | {r['audio_s_per_s']:.1f} | {pct(r['padding_fraction'])} | "
            f"{r['tflops_per_device']:.4f} | {pct(r['mfu'])} | {pct(r['hfu'])} | "
            f"{pct(r['mfu_vs_measured'])} | {r['peak_memory_gib']:.2f} | {r['data_s']:.3f} | "
            f"{r['flop_counter_ratio']:.4f} |")
    notes = [f"micro {r['micro']}, {r['seconds']:g} s: DeepSpeed flops profiler / analytic "
             f"forward FLOPs {r['ds_flops_profiler_ratio']:.4f}"
             for r in rows if "ds_flops_profiler_ratio" in r]
    notes += [f"micro {r['micro']}: no-grad eval micro-batch {r['eval_micro_s']:.3f} s "
              f"(first {r['eval_first_s']:.3f} s)" for r in rows if "eval_micro_s" in r]
    return "\n".join(lines + ([""] + notes if notes else []))


def setup(args: argparse.Namespace) -> tuple:
    """(cfg, ds, implementations, precision, rank, world, device): the config resolved for
    this device and the process group joined, as train.py does."""
    cfg = load_config(args.config, args.set)
    ds = json.loads(Path(args.deepspeed_config).read_text())
    precision = None
    if not torch.cuda.is_available():  # CUDA runs keep the JSON's precision
        precision = choose_cpu_precision(args.precision, cfg, ds["train_micro_batch_size_per_gpu"])
        ds = apply_precision(ds, precision)
        print(f"[bench] precision {precision.dtype}: {precision.reason}", flush=True)
    if "RANK" not in os.environ:  # a plain `python tools/bench_throughput.py`: one process
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", "29531"))
    rank, world, local_rank = E.dist_env()
    device = E.training_device(local_rank)
    E.check_device_config(cfg, device)
    warn_if_jit_build(device, point_ds_config(ds, 1, world, args.torch_adam), rank)
    cfg, paths = E.resolve_fast_paths(cfg, device)
    # bf16: a wrong kernel stops the benchmark as it stops train.py
    paths["numerics_check"] = check_for_run(cfg, ds, ds["train_micro_batch_size_per_gpu"],
                                            device, lambda line: print(f"[bench] rank {rank}: "
                                                                       f"{line}", flush=True))
    E.init_distributed(cfg.training.process_group_timeout_s)
    torch.manual_seed(rank)
    return cfg, ds, paths, precision, rank, world, device


def run(args: argparse.Namespace) -> list[dict]:
    """Every sweep point in turn; rank 0 prints the table and rewrites args.json after each
    row. Returns the rows."""
    cfg, ds, paths, precision, rank, world, device = setup(args)
    name = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} thread(s) per rank, {precision.dtype}"
    measured = measured_peak_tflops(device) if args.measure_peak else None
    report = {"device": name, "implementations": paths, "measured_peak_tflops": measured,
              "torch_adam": args.torch_adam, "rows": []}
    for micro, seconds in sweep_points(args, ds["train_micro_batch_size_per_gpu"],
                                       args.seconds or cfg.data.max_duration_s):
        try:
            row = bench_point(cfg, ds, micro, seconds, args, rank, world, measured)
        except Exception as err:  # e.g. out of memory, an impossible batch: report, go on
            first = (str(err).splitlines() or [""])[0]
            row = {"micro": micro, "seconds": seconds, "error": f"{type(err).__name__}: {first}"}
        report["rows"].append(row)
        if rank == 0:
            print(f"[bench] row {len(report['rows'])}: {json.dumps(row)}", flush=True)
            if args.json:
                write_json_atomic(args.json, report)
    if rank == 0:
        print(markdown(report["rows"], name))
    return report["rows"]

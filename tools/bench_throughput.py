"""Training throughput of the real trainer step: what train.py does, timed.

usage: python tools/bench_throughput.py [--config configs/demo.yaml]
           [--deepspeed_config ds_configs/cpu_smoke.json] [--set key=value ...]
           [--steps 5] [--warmup 2] [--seconds S] [--lengths-from INDEX | --min-seconds S]
           [--peak-tflops X] [--measure-peak] [--sweep micro=1,2,4 --sweep seconds=2,4]
           [--ds-flops-profiler] [--json out.json]
       deepspeed --hostfile hostfiles/localhost ... tools/bench_throughput.py ...  (several ranks)

Each optimizer step runs `wavlm_ds.engine.optimizer_step`, the function train.py's loop
calls: log-Mel, mixing (with the noise stream when the config has one: the real noise
loader in its DataLoader workers; else synthetic noise crops), the span mask, the global
masked count, forward + backward of each micro-batch through the DeepSpeed engine, the
optimizer, the totals all-reduce, and the trainer's one host sync (the stop flag). Row
lengths are drawn from a shard index's durations (`--lengths-from`: per-sample durations
where the index has them, else each shard's mean), or uniformly in [--min-seconds,
--seconds]; cropped at data.max_duration_s, dropped below data.min_duration_s, and
bucketed like the loader (data.bucket_batches batches sorted together), so padding is what
the trainer sees. Default (no flag): full-length rows of --seconds.

After `--warmup` steps, the median of `--steps` is reported: samples/s, seconds of audio/s,
encoder frames/s (valid, all ranks), model and hardware TFLOP/s per device (model: valid
frames, layers that ran; hardware: padded, as executed; see wavlm_ds/model/flops.py), MFU
and HFU against the datasheet peak (wavlm_ds/metrics.py) and, with --measure-peak on CUDA,
against this GPU's measured bf16 matmul rate; peak memory (CUDA max_memory_allocated; CPU
peak RSS); data time (batch making, outside the step, as the loader's prefetch is). Model
FLOPs are cross-checked against torch's FlopCounterMode on one micro-batch, and optionally
against DeepSpeed's flops profiler. A sweep point that fails (e.g. out of memory) is reported
as such and the sweep goes on.
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
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from wavlm_ds.prebuild_ops import use_prebuilt_ops  # noqa: E402

use_prebuilt_ops()

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from wavlm_ds import engine as E  # noqa: E402
from wavlm_ds.config import check_batch_arithmetic, load_config  # noqa: E402
from wavlm_ds.data.index import read_index  # noqa: E402
from wavlm_ds.metrics import device_peak_tflops, mfu  # noqa: E402
from wavlm_ds.model import WavLMEncoder  # noqa: E402
from wavlm_ds.model.flops import forward_flops  # noqa: E402
from wavlm_ds.precision import CHOICES, apply_precision, choose_cpu_precision  # noqa: E402

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


def one_step(engine, cfg, sampler: LengthSampler, noise, accum: int, step: int, rank: int,
             world: int, gen: torch.Generator) -> tuple[float, float, "E.StepResult"]:
    """(data seconds, step seconds, result): the step timed exactly as train.py's loop."""
    t0 = time.perf_counter()
    batches = [make_batch(sampler.next(), gen) for _ in range(accum)]
    noises = [next(noise) for _ in range(accum)]
    t1 = time.perf_counter()
    result = E.optimizer_step(engine, cfg, batches, noises, step, rank, world, False)
    result.total("stop").item()  # the trainer's one sync per step
    return t1 - t0, time.perf_counter() - t1, result


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


def flop_counter_check(cfg, micro: int, frames: int) -> float:
    """FlopCounterMode forward FLOPs / the analytic count, on one micro-batch shape."""
    model_cfg = dataclasses.replace(cfg.model, attention_impl="reference")
    model = WavLMEncoder(model_cfg).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(micro, frames, 80), torch.full((micro,), frames))
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


def bench_point(cfg, ds: dict, micro: int, seconds: float, args, rank: int, world: int,
                measured_peak: float | None) -> dict:
    ds = dict(ds, train_micro_batch_size_per_gpu=micro)
    ds["train_batch_size"] = micro * ds["gradient_accumulation_steps"] * world
    ds.pop("scheduler", None)  # constant lr: the schedule does not change the work
    _, micro, accum = check_batch_arithmetic(ds, world, "bench_throughput")
    engine = E.build_engine(cfg, ds, rank)
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    gen = torch.Generator().manual_seed(1000 + rank)
    sampler = LengthSampler(cfg, micro, seconds, args, 2000 + rank)
    noise = noise_batches(cfg, micro, rank, world, gen)
    t_compile = time.perf_counter()
    runs = [one_step(engine, cfg, sampler, noise, accum, s, rank, world, gen)
            for s in range(1, args.warmup + args.steps + 1)]
    first_step_s = runs[0][1]
    runs = runs[args.warmup:]
    step_s = statistics.median(r[1] for r in runs)
    flops = [E.step_flops(cfg, r[2], 0) for r in runs]  # layerdrop draws of step 0: a proxy
    totals = [dict(zip(E.TOTALS, r[2].totals.tolist())) for r in runs]
    audio = statistics.median(t["audio_seconds"] for t in totals)
    frames = statistics.median(t["frames"] for t in totals) / cfg.model.frame_stack
    samples = micro * accum * world
    model_tflops = statistics.median(f[0] for f in flops) / step_s / 1e12
    hw_tflops = statistics.median(f[1] for f in flops) / step_s / 1e12
    peak = device_peak_tflops(engine.device, args.peak_tflops)
    row = {"micro": micro, "accum": accum, "world": world, "seconds": seconds,
           "lengths": args.lengths_from or ("uniform" if args.min_seconds else "full"),
           "compile": cfg.model.compile, "attention_impl": cfg.model.attention_impl,
           "step_s": step_s, "first_step_s": first_step_s, "data_s": statistics.median(r[0] for r in runs),
           "samples_per_s": samples / step_s, "audio_s_per_s": audio / step_s,
           "audio_s_per_device_s": audio / step_s / world,
           "frames_per_s": frames / step_s,
           "padding_fraction": statistics.median(padding_fraction(r[2]) for r in runs),
           "tflops_per_device": model_tflops, "hardware_tflops_per_device": hw_tflops,
           "mfu": mfu(model_tflops, peak), "hfu": mfu(hw_tflops, peak), "peak_tflops": peak,
           "measured_peak_tflops": measured_peak, "mfu_vs_measured": mfu(model_tflops, measured_peak),
           "peak_memory_gib": peak_memory_bytes(engine.device) / 2**30,
           "memory_method": "cuda max_memory_allocated" if engine.device.type == "cuda"
           else "process peak RSS (getrusage)",
           "flop_counter_ratio": flop_counter_check(cfg, micro, 1 + int(seconds * SR) // 160),
           "wall_s": time.perf_counter() - t_compile}
    if args.ds_flops_profiler:
        row["ds_flops_profiler_ratio"] = ds_flops_profiler(engine, cfg, micro, seconds, gen)
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
    checks = [f"micro {r['micro']}, {r['seconds']:g} s: {r['ds_flops_profiler_ratio']:.4f}"
              for r in rows if "ds_flops_profiler_ratio" in r]
    if checks:
        lines += ["", "DeepSpeed flops profiler / analytic forward FLOPs: " + "; ".join(checks)]
    return "\n".join(lines)


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
                   help="draw row durations uniformly in [min, --seconds]")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--measure-peak", action="store_true",
                   help="CUDA: also measure this GPU's bf16 matmul TFLOP/s and report MFU vs it")
    p.add_argument("--sweep", action="append", default=[], metavar="AXIS=V1,V2")
    p.add_argument("--ds-flops-profiler", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--precision", choices=CHOICES, default="auto",
                   help="CPU only: bf16 where the CPU computes it natively (auto), or as asked")
    p.add_argument("--local_rank", type=int, default=0, help="set by the deepspeed launcher")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.set)
    ds = json.loads(Path(args.deepspeed_config).read_text())
    precision = None
    if not torch.cuda.is_available():  # CUDA runs keep the JSON's precision
        precision = choose_cpu_precision(args.precision)
        ds = apply_precision(ds, precision)
        print(f"[bench] precision {precision.dtype}: {precision.reason}", flush=True)
    if "RANK" not in os.environ:  # a plain `python tools/bench_throughput.py`: one process
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", "29531"))
    rank, world, local_rank = E.dist_env()
    device = E.training_device(local_rank)
    E.check_device_config(cfg, device)
    cfg, paths = E.resolve_fast_paths(cfg, device)
    E.init_distributed(cfg.training.process_group_timeout_s)
    torch.manual_seed(rank)
    measured = measured_peak_tflops(device) if args.measure_peak else None
    rows = []
    for micro, seconds in sweep_points(args, ds["train_micro_batch_size_per_gpu"],
                                       args.seconds or cfg.data.max_duration_s):
        try:
            rows.append(bench_point(cfg, ds, micro, seconds, args, rank, world, measured))
        except Exception as err:  # e.g. out of memory, an impossible batch: report, go on
            first = (str(err).splitlines() or [""])[0]
            rows.append({"micro": micro, "seconds": seconds,
                         "error": f"{type(err).__name__}: {first}"})
    if rank == 0:
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else \
            f"CPU, {torch.get_num_threads()} thread(s) per rank, {precision.dtype}"
        print(markdown(rows, name))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"device": name, "implementations": paths,
                                             "measured_peak_tflops": measured, "rows": rows},
                                            indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

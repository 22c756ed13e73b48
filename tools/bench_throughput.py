"""Training throughput of the real engine: the full step, timed phase by phase.

usage: python tools/bench_throughput.py [--config configs/demo.yaml]
           [--deepspeed_config ds_configs/cpu_smoke.json] [--set key=value ...]
           [--steps 5] [--warmup 2] [--seconds S] [--peak-tflops X]
           [--sweep micro=1,2,4 --sweep seconds=2,4] [--ds-flops-profiler] [--json out.json]
       deepspeed --hostfile hostfiles/localhost ... tools/bench_throughput.py ...  (several ranks)

One optimizer step = `gradient_accumulation_steps` micro-batches of `micro` rows of
`--seconds` of synthetic speech-like audio each (full-length rows, so the numbers do not
depend on a corpus): log-Mel + span mask on the device, forward, backward, optimizer, through
the DeepSpeed engine exactly as train.py builds it. After `--warmup` steps, the median of
`--steps` is reported: samples/s, seconds of audio/s and encoder frames/s (all ranks),
achieved TFLOP/s per device and MFU against the peak table of wavlm_ds/metrics.py (None on
CPU unless --peak-tflops), peak memory (CUDA: torch.cuda.max_memory_allocated; CPU: the
process's peak RSS from getrusage, which includes the Python runtime and DeepSpeed), and the
split of step time into data, features + masking, forward, backward and optimizer (phases
are separated by device synchronization, which costs a little on CUDA). Model FLOPs are the
analytic counter (3 x forward); they are cross-checked against torch's FlopCounterMode on
one micro-batch, and optionally against DeepSpeed's flops profiler.

A sweep point that fails (e.g. out of memory) is reported as such and the sweep goes on.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from wavlm_ds import engine as E
from wavlm_ds.config import check_batch_arithmetic, load_config
from wavlm_ds.metrics import device_peak_tflops, mfu
from wavlm_ds.model import WavLMEncoder
from wavlm_ds.model.flops import encoder_frames, forward_flops
from wavlm_ds.precision import CHOICES, apply_precision, choose_cpu_precision

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
PHASES = ("data", "features_mask", "forward", "backward", "optimizer")


def synthetic_batch(micro: int, seconds: float, gen: torch.Generator) -> dict:
    """Full-length rows of harmonic 'speech' with noise: a batch dict like the loader's."""
    n = int(seconds * SR)
    t = torch.arange(n) / SR
    f0 = 100 + 100 * torch.rand(micro, 1, generator=gen)
    audio = sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, 8))
    audio = 0.1 * audio + 0.01 * torch.randn(micro, n, generator=gen)
    return {"audio": audio.float(), "lengths": torch.full((micro,), n, dtype=torch.long),
            "valid": torch.ones(micro, dtype=torch.bool), "keys": [""] * micro, "epoch": 0}


class PhaseTimer:
    """Accumulates wall time per phase, synchronizing the device at each boundary."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.totals = device, dict.fromkeys(PHASES, 0.0)
        self.t = time.perf_counter()

    def mark(self, phase: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.totals[phase] += now - self.t
        self.t = now


def one_step(engine, cfg, micro: int, accum: int, seconds: float, step: int, rank: int,
             gen: torch.Generator) -> dict[str, float]:
    timer = PhaseTimer(engine.device)
    for i in range(accum):
        batch = synthetic_batch(micro, seconds, gen)
        timer.mark("data")
        mb = E.prepare_micro(batch, cfg, engine.device, step, i, rank)
        timer.mark("features_mask")
        layerdrop = E.make_generator("cpu", cfg.training.seed, E.LAYERDROP, step, i)
        loss, _ = engine(mb.features, mb.targets, mb.frame_lengths, mb.mask, layerdrop)
        timer.mark("forward")
        engine.backward(loss / mb.mask.sum().clamp(min=1))
        timer.mark("backward")
        engine.step()
        timer.mark("optimizer")
    return timer.totals


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
    mb = E.prepare_micro(synthetic_batch(micro, seconds, gen), cfg, engine.device, 0, 0, 0)
    prof = FlopsProfiler(engine.module.encoder)
    engine.module.eval()
    prof.start_profile()
    with torch.no_grad():
        engine.module.encoder(mb.features, mb.frame_lengths, mb.mask)
    flops = prof.get_total_flops()
    prof.end_profile()
    engine.module.train()
    return flops / forward_flops(cfg.model, mb.features.shape[1], micro)


def bench_point(cfg, ds: dict, micro: int, seconds: float, args, rank: int, world: int) -> dict:
    ds = dict(ds, train_micro_batch_size_per_gpu=micro)
    ds["train_batch_size"] = micro * ds["gradient_accumulation_steps"] * world
    ds.pop("scheduler", None)  # constant lr: the schedule does not change the work
    _, micro, accum = check_batch_arithmetic(ds, world, "bench_throughput")
    engine = E.build_engine(cfg, ds, rank)
    gen = torch.Generator().manual_seed(1000 + rank)
    times = [one_step(engine, cfg, micro, accum, seconds, s, rank, gen)
             for s in range(args.warmup + args.steps)][args.warmup:]
    step_s = [sum(t.values()) for t in times]
    median = statistics.median(step_s)
    frames_in = 1 + int(seconds * SR) // 160
    flops = 3 * forward_flops(cfg.model, frames_in, micro) * accum
    peak = device_peak_tflops(engine.device, args.peak_tflops)
    tflops = flops / median / 1e12
    samples = micro * accum * world
    row = {"micro": micro, "accum": accum, "world": world, "seconds": seconds,
           "step_s": median, "samples_per_s": samples / median,
           "audio_s_per_s": samples * seconds / median,
           "frames_per_s": samples * encoder_frames(frames_in, cfg.model.frame_stack) / median,
           "tflops_per_device": tflops, "mfu": mfu(tflops, peak), "peak_tflops": peak,
           "peak_memory_gib": peak_memory_bytes(engine.device) / 2**30,
           "memory_method": "cuda max_memory_allocated" if engine.device.type == "cuda"
           else "process peak RSS (getrusage)",
           "split": {p: statistics.median(t[p] for t in times) / median for p in PHASES},
           "flop_counter_ratio": flop_counter_check(cfg, micro, frames_in)}
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
             "| micro x accum x ranks | s/row | s/step | samples/s | audio s/s | frames/s | "
             "TFLOP/s/dev | MFU | peak mem GiB | data / feat+mask / fwd / bwd / opt | "
             "FLOPs vs FlopCounterMode |", "|---" * 11 + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['micro']} | {r['seconds']} | failed: {r['error']} |" + " |" * 8)
            continue
        split = " / ".join(f"{100 * r['split'][p]:.0f}%" for p in PHASES)
        util = "n/a (no peak for CPU)" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(
            f"| {r['micro']} x {r['accum']} x {r['world']} | {r['seconds']:g} | {r['step_s']:.3f} | "
            f"{r['samples_per_s']:.2f} | {r['audio_s_per_s']:.1f} | {r['frames_per_s']:.0f} | "
            f"{r['tflops_per_device']:.4f} | "
            f"{util} | "
            f"{r['peak_memory_gib']:.2f} | {split} | {r['flop_counter_ratio']:.4f} |")
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
    p.add_argument("--peak-tflops", type=float, default=None)
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
    rank, world, _ = E.dist_env()
    E.init_distributed(cfg.training.process_group_timeout_s)
    torch.manual_seed(rank)
    rows = []
    for micro, seconds in sweep_points(args, ds["train_micro_batch_size_per_gpu"],
                                       args.seconds or cfg.data.max_duration_s):
        try:
            rows.append(bench_point(cfg, ds, micro, seconds, args, rank, world))
        except Exception as err:  # e.g. out of memory, an impossible batch: report, go on
            first = (str(err).splitlines() or [""])[0]
            rows.append({"micro": micro, "seconds": seconds,
                         "error": f"{type(err).__name__}: {first}"})
    if rank == 0:
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else \
            f"CPU, {torch.get_num_threads()} thread(s) per rank, {precision.dtype}"
        print(markdown(rows, device))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"device": device, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

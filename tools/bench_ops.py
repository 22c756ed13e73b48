"""Time each op of wavlm_ds.ops against what users would otherwise run, in one run.

usage: python tools/bench_ops.py [--only logmel,mask,attention] [--repeats 7] [--threads 1]
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
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import fairseq_compute_mask_indices  # noqa: E402

from wavlm_ds.memory import LiveBytes  # noqa: E402
from wavlm_ds.ops.attention import (attention_reference, flex_block_mask,  # noqa: E402
                                    flex_gated_attention, sdpa_gated_attention)
from wavlm_ds.ops.blocked_attention import blocked_attention  # noqa: E402
from wavlm_ds.ops.logmel import CHUNK_FRAMES, log_mel, mel_power  # noqa: E402
from wavlm_ds.ops.span_mask import span_mask  # noqa: E402


def interleaved(fns: dict[str, Callable], repeats: int, warmup: int = 3
                ) -> dict[str, list[float]]:
    """Every variant once per round, the order flipped every round, so that machine noise
    hits all alike; warm-up rounds are dropped. Seconds per call, per variant."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for i in range(warmup + repeats):
        for name in (names if i % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            fns[name]()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def one_at_a_time(fns: dict[str, Callable], repeats: int, warmup: int = 3
                  ) -> dict[str, dict[str, float]]:
    """Each variant alone, `repeats` calls after `warmup`: median seconds and median minor
    page faults per call (ru_minflt). Interleaving evicts caches and makes the allocator
    hand out fresh pages; this is the other end, what a variant costs in a steady loop."""
    out = {}
    for name, fn in fns.items():
        secs, faults = [], []
        for i in range(warmup + repeats):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                secs.append(time.perf_counter() - t0)
                faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        out[name] = {"median_s": statistics.median(secs), "page_faults": statistics.median(faults)}
    return out


def timeit(fns: dict[str, Callable], repeats: int, warmup: int = 3) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in interleaved(fns, repeats, warmup).items()}


def blocked_floor(audio: torch.Tensor) -> torch.Tensor:
    """The floor of our blocked path: interior frames only, per ~1024-frame block, the same
    window + rfft + re*re+im*im + mel matmul (`mel_power`). No log, no edge frames, no
    normalization."""
    B = audio.shape[0]
    view = audio.unfold(1, 400, 160)
    step = max(1, CHUNK_FRAMES // B)
    out = audio.new_empty(B, view.shape[1], 80)
    for c0 in range(0, view.shape[1], step):
        out[:, c0:c0 + step] = mel_power(view[:, c0:c0 + step])
    return out


def bench_logmel(repeats: int) -> dict:
    import torchaudio
    audio = torch.randn(8, 16 * 16000) * 0.1
    lengths = torch.full((8,), 16 * 16000)
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=80)
    window = torch.hann_window(400)
    fb = torchaudio.functional.melscale_fbanks(201, 0.0, 8000.0, 80, 16000, norm=None,
                                               mel_scale="htk")
    fns = {"wavlm_ds log_mel (htk, normalized)": lambda: log_mel(audio, lengths),
           "wavlm_ds log_mel (htk, not normalized: equal output)":
               lambda: log_mel(audio, lengths, normalize=False),
           "torchaudio MelSpectrogram + log": lambda: torch.log(mel(audio).clamp(min=1e-10)),
           "torchaudio kaldi.fbank (per row)": lambda: [torchaudio.compliance.kaldi.fbank(
               audio[i:i + 1], num_mel_bins=80, dither=0.0) for i in range(8)],
           "floor: bare torch.stft + mel matmul": lambda: torch.stft(
               audio, 400, 160, window=window, return_complex=True).abs().pow(2).transpose(1, 2) @ fb,
           "floor, blocked: rfft + re*re+im*im + mel matmul per block": lambda: blocked_floor(audio)}
    return {"shape": "8 x 16 s", "median_s": timeit(fns, repeats),
            "alone": one_at_a_time({k: fns[k] for k in list(fns)[:3]}, repeats)}


def bench_mask(repeats: int) -> dict:
    lengths = torch.randint(600, 801, (64,), generator=torch.Generator().manual_seed(0))
    padding = (np.arange(800)[None] >= lengths.numpy()[:, None])
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    # fairseq masks ~1-(1-p/L)^L with overlaps; p = 1.6 gives ~80% at L = 10
    p = 1.6
    effective = fairseq_compute_mask_indices((64, 800), padding, p, 10, 2, rng).sum() / lengths.sum().item()
    compiled = torch.compile(span_mask, dynamic=True)
    fns = {"wavlm_ds span_mask (eager)": lambda: span_mask(lengths, 800, 0.8, 10, gen),
           "wavlm_ds span_mask (compiled)": lambda: compiled(lengths, 800, 0.8, 10, gen),
           "fairseq compute_mask_indices (numpy)": lambda: fairseq_compute_mask_indices(
               (64, 800), padding, p, 10, 2, rng)}
    return {"shape": "64 x 800", "fairseq_mask_prob": p,
            "fairseq_effective_ratio": float(effective), "median_s": timeit(fns, repeats),
            "alone": one_at_a_time({k: fns[k] for k in list(fns)[::2]}, repeats)}


ATTN = {"reference": attention_reference, "blocked": blocked_attention,
        "sdpa": sdpa_gated_attention}


def attention_child(variant: str) -> None:
    """Runs in a subprocess: time and peak memory of one fwd+bwd at B=4, H=16, T=800, Dh=64.

    Two memory figures: the peak of live tensor bytes over forward + backward above the
    inputs (wavlm_ds.memory.LiveBytes, what CUDA's max_memory_allocated measures; exact and
    repeatable), and ru_maxrss over a baseline (includes allocator caching)."""
    g = torch.Generator().manual_seed(0)
    B, H, T, D = 4, 16, 800, 64
    tensors = [torch.randn(B, H, T, D, generator=g).requires_grad_() for _ in range(3)]
    tensors += [torch.rand(B, H, T, generator=g).requires_grad_(),
                torch.randn(H, 2 * T - 1, generator=g).requires_grad_()]
    pad = torch.arange(T)[None] >= torch.tensor([800, 700, 650, 800])[:, None]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(3):
        for t in tensors:
            t.grad = None
        t0 = time.perf_counter()
        ATTN[variant](*tensors, pad).sum().backward()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    for t in tensors:
        t.grad = None
    live = LiveBytes([*tensors, pad])
    with live:
        ATTN[variant](*tensors, pad).sum().backward()
    print(json.dumps({"median_s": statistics.median(times), "peak_extra_mb": peak / 1024,
                      "peak_live_mib": live.peak / 2**20}))


def bench_attention(threads: int) -> dict:
    out = {}
    for variant in ATTN:
        proc = subprocess.run([sys.executable, __file__, "--attention-child", variant,
                               "--threads", str(threads)], capture_output=True, text=True, check=True)
        out[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"shape": "B=4 H=16 T=800 Dh=64, fwd+bwd", "variants": out}


def bench_attention_small(repeats: int) -> dict:
    """The demo's sizes (B=4, H=4, head dim 24, one padded row), forward + backward,
    interleaved: the block loop vs the explicit-bias math that `blocked` switches to at or
    below ops.attention.BLOCKED_MIN_SCORES."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for T in (150, 300):
        tensors = [torch.randn(4, 4, T, 24, generator=g).requires_grad_() for _ in range(3)]
        tensors += [torch.rand(4, 4, T, generator=g).requires_grad_(),
                    torch.randn(4, 2 * T - 1, generator=g).requires_grad_()]
        pad = torch.arange(T)[None] >= torch.tensor([T, T // 2, T, T])[:, None]
        fns = {"blocked loop (block 64)": lambda: blocked_attention(*tensors, pad, block=64),
               "explicit bias": lambda: attention_reference(*tensors, pad)}
        times = {k: [] for k in fns}
        for _ in range(repeats + 1):  # the first round warms up
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn().sum().backward()
                times[name].append(time.perf_counter() - t0)
        out[f"T={T}"] = {k: statistics.median(v[1:]) for k, v in times.items()}
    return {"shape": "B=4 H=4 Dh=24, fwd+bwd, interleaved", "median_s": out}


def cuda_time(fn: Callable, repeats: int, warmup: int = 3) -> float:
    """Median seconds of fn() on the GPU (CUDA events, synchronized per call)."""
    times = []
    for i in range(warmup + repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def bench_cuda(repeats: int) -> dict:
    """The ops on the GPU at the trainer's sizes (see the module docstring)."""
    import torchaudio
    dev = torch.device("cuda")
    audio, lengths = torch.randn(64, 16 * 16000, device=dev) * 0.1, torch.full((64,), 16 * 16000,
                                                                                device=dev)
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=80).to(dev)
    out = {"logmel 64 x 16 s": {
        "torch.stft path": cuda_time(lambda: log_mel(audio, lengths, impl="torch"), repeats),
        "triton": cuda_time(lambda: log_mel(audio, lengths, impl="triton"), repeats),
        "torchaudio MelSpectrogram + log": cuda_time(
            lambda: torch.log(mel(audio).clamp(min=1e-10)), repeats)}}
    frames = torch.randint(600, 801, (512,), device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    out["span_mask 512 x 800"] = {"eager": cuda_time(lambda: span_mask(frames, 800, 0.8, 10, gen),
                                                     repeats)}
    g = torch.Generator().manual_seed(0)
    B, H, T, D = 4, 16, 800, 64
    make = lambda *shape: torch.randn(*shape, generator=g).to(dev, torch.bfloat16).requires_grad_()  # noqa: E731
    tensors = [make(B, H, T, D), make(B, H, T, D), make(B, H, T, D), make(B, H, T), make(H, 2 * T - 1)]
    pad = torch.arange(T, device=dev)[None] >= torch.tensor([800, 700, 650, 800], device=dev)[:, None]
    variants = dict(ATTN, flex=lambda q, k, v, gt, rb, p: flex_gated_attention(
        q, k, v, gt, rb, flex_block_mask(p)))
    attn = {}
    for name, fn in variants.items():
        try:
            seconds = cuda_time(lambda: fn(*tensors, pad).sum().backward(), repeats)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn(*tensors, pad).sum().backward()
            attn[name] = {"median_s": seconds,
                          "peak_extra_mib": (torch.cuda.max_memory_allocated() - base) / 2**20}
        except Exception as err:  # report and go on to the next variant
            attn[name] = {"error": f"{type(err).__name__}: {str(err)[:200]}"}
    out["attention B=4 H=16 T=800 Dh=64 bf16 fwd+bwd"] = attn
    return out


def print_alone(alone: dict[str, dict[str, float]], baseline: str) -> None:
    base = alone[baseline]["median_s"]
    print("\none variant at a time\n| variant | median s | x faster | page faults per call |"
          "\n|---|---|---|---|")
    for k, x in alone.items():
        print(f"| {k} | {x['median_s']:.5f} | {base / x['median_s']:.2f} | {x['page_faults']:.0f} |")


def print_table(name: str, medians: dict[str, float], baseline: str) -> None:
    print(f"\n{name}\n| variant | median s | x faster than baseline |\n|---|---|---|")
    for k, v in medians.items():
        print(f"| {k} | {v:.5f} | {medians[baseline] / v:.2f} |")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", default="logmel,mask,attention")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--attention-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        result = {"device": torch.cuda.get_device_name(), **bench_cuda(args.repeats)}
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2))
        return 0
    if args.attention_child:
        attention_child(args.attention_child)
        return 0
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    result = {"threads": args.threads}
    only = args.only.split(",")
    if "logmel" in only:
        result["logmel"] = r = bench_logmel(args.repeats)
        print_table(f"log-Mel, {r['shape']}", r["median_s"], "torchaudio MelSpectrogram + log")
        print_alone(r["alone"], "torchaudio MelSpectrogram + log")
    if "mask" in only:
        result["mask"] = r = bench_mask(args.repeats)
        print_table(f"span mask, {r['shape']} (fairseq mask_prob {r['fairseq_mask_prob']} -> "
                    f"{r['fairseq_effective_ratio']:.3f} masked)", r["median_s"],
                    "fairseq compute_mask_indices (numpy)")
        print_alone(r["alone"], "fairseq compute_mask_indices (numpy)")
    if "attention" in only:
        result["attention"] = r = bench_attention(args.threads)
        v = r["variants"]
        print(f"\nattention, {r['shape']}\n| variant | median s | peak live tensor MiB | "
              "peak RSS extra MB |\n|---|---|---|---|")
        for k, x in v.items():
            print(f"| {k} | {x['median_s']:.3f} | {x['peak_live_mib']:.0f} | "
                  f"{x['peak_extra_mb']:.0f} |")
        ref, blk = v["reference"], v["blocked"]
        print(f"time ratio blocked/reference = {blk['median_s'] / ref['median_s']:.2f}, memory "
              f"ratio (live tensors) = {blk['peak_live_mib'] / ref['peak_live_mib']:.3f}, "
              f"(RSS) = {blk['peak_extra_mb'] / max(ref['peak_extra_mb'], 1e-9):.3f}")
    if "attention_small" in only:
        result["attention_small"] = r = bench_attention_small(args.repeats)
        print(f"\nattention at the demo's sizes, {r['shape']}\n| T | blocked loop s | "
              "explicit bias s | ratio |\n|---|---|---|---|")
        for T, x in r["median_s"].items():
            loop, explicit = x["blocked loop (block 64)"], x["explicit bias"]
            print(f"| {T} | {loop:.4f} | {explicit:.4f} | {loop / explicit:.2f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

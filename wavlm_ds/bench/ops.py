"""Each op of wavlm_ds.ops timed against what users would otherwise run (tools/bench_ops.py).

CPU: log-Mel against torchaudio and two floors, the span masker against fairseq's numpy
masking (bench/baselines.py), the attention paths' time and peak memory at T = 800 (one
subprocess per variant), and the block loop against the explicit-bias math at the demo's
sizes, and the positional conv's bf16 options. CUDA: log-Mel (torch.stft path, Triton, torchaudio), the masker and attention
fwd + bwd in bf16 with torch.cuda.max_memory_allocated above the inputs.
"""
from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from wavlm_ds.bench.baselines import fairseq_compute_mask_indices
from wavlm_ds.bench.timing import cuda_time, interleaved, one_at_a_time, timeit
from wavlm_ds.memory import LiveBytes
from wavlm_ds.ops.attention import (attention_reference, flex_block_mask, flex_gated_attention,
                                    sdpa_gated_attention)
from wavlm_ds.ops.blocked_attention import blocked_attention
from wavlm_ds.ops.logmel import CHUNK_FRAMES, log_mel, mel_power
from wavlm_ds.ops.span_mask import span_mask


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
        code = (f"import torch; torch.set_num_threads({threads}); "
                f"from wavlm_ds.bench.ops import attention_child; attention_child({variant!r})")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True)
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


def _conv_unfold_bmm(x, w, b, pad: int, groups: int) -> torch.Tensor:
    """A grouped conv1d as unfold + one batched matmul per group (no conv kernel at all)."""
    B, C, _ = x.shape
    out_ch, per_group, k = w.shape
    cols = F.pad(x, (pad, pad)).unfold(2, k, 1)  # (B, C, T_out, k)
    T_out = cols.shape[2]
    cols = cols.reshape(B, groups, per_group, T_out, k).permute(1, 0, 3, 2, 4)
    y = torch.bmm(cols.reshape(groups, B * T_out, per_group * k),
                  w.reshape(groups, out_ch // groups, per_group * k).transpose(1, 2))
    return y.reshape(groups, B, T_out, -1).permute(1, 0, 3, 2).reshape(B, out_ch, T_out) + \
        b[None, :, None]


def bench_pos_conv(repeats: int) -> dict:
    """The positional conv's correct bf16 options on CPU (model.encoder.ConvPositionalEmbedding
    picked fp32), forward + backward from bf16 inputs, interleaved, with each one's relative
    error against fp32: the demo's shape and large_plus's."""
    out = {}
    options = {
        "native bf16 (oneDNN; wrong on AMX at <= 12 channels/group)":
            lambda x, w, b, p, g: F.conv1d(x, w, b, padding=p, groups=g),
        "fp32 and cast back (chosen)": lambda x, w, b, p, g: F.conv1d(
            x.float(), w.float(), b.float(), padding=p, groups=g).to(x.dtype),
        "unfold + bmm": _conv_unfold_bmm,
        "oneDNN off": _conv_mkldnn_off}
    for label, (C, groups, k, B, T) in {"demo 96/8, k 32, 4 x 300": (96, 8, 32, 4, 300),
                                        "large_plus 1280/16, k 128, 1 x 800":
                                            (1280, 16, 128, 1, 800)}.items():
        g = torch.Generator().manual_seed(0)
        x0 = torch.randn(B, C, T, generator=g)
        w0 = torch.randn(C, C // groups, k, generator=g) / (C // groups * k) ** 0.5
        b0 = 0.1 * torch.randn(C, generator=g)
        ref = F.conv1d(x0, w0, b0, padding=k // 2, groups=groups)
        args = [t.to(torch.bfloat16).requires_grad_() for t in (x0, w0, b0)]
        fns = {name: (lambda fn=fn: fn(*args, k // 2, groups).float().sum().backward())
               for name, fn in options.items()}
        times = interleaved(fns, repeats, warmup=1)
        with torch.no_grad():
            errors = {name: float((fn(*args, k // 2, groups).float() - ref).norm() / ref.norm())
                      for name, fn in options.items()}
        out[label] = {name: {"median_s": statistics.median(times[name]), "rel_error": errors[name]}
                      for name in options}
    return {"shape": "bf16 inputs, fwd+bwd, interleaved", "results": out}


def _conv_mkldnn_off(x, w, b, pad: int, groups: int) -> torch.Tensor:
    with torch.backends.mkldnn.flags(enabled=False):
        return F.conv1d(x, w, b, padding=pad, groups=groups)


def print_pos_conv(r: dict) -> None:
    for label, rows in r["results"].items():
        print(f"\npositional conv, {label}, {r['shape']}\n| option | median s | rel. error vs"
              " fp32 |\n|---|---|---|")
        for name, x in rows.items():
            print(f"| {name} | {x['median_s']:.4f} | {x['rel_error']:.4f} |")


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




def print_logmel(r: dict) -> None:
    print_table(f"log-Mel, {r['shape']}", r["median_s"], "torchaudio MelSpectrogram + log")
    print_alone(r["alone"], "torchaudio MelSpectrogram + log")


def print_mask(r: dict) -> None:
    print_table(f"span mask, {r['shape']} (fairseq mask_prob {r['fairseq_mask_prob']} -> "
                f"{r['fairseq_effective_ratio']:.3f} masked)", r["median_s"],
                "fairseq compute_mask_indices (numpy)")
    print_alone(r["alone"], "fairseq compute_mask_indices (numpy)")


def print_attention(r: dict) -> None:
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


def print_attention_small(r: dict) -> None:
    print(f"\nattention at the demo's sizes, {r['shape']}\n| T | blocked loop s | "
          "explicit bias s | ratio |\n|---|---|---|---|")
    for T, x in r["median_s"].items():
        loop, explicit = x["blocked loop (block 64)"], x["explicit bias"]
        print(f"| {T} | {loop:.4f} | {explicit:.4f} | {loop / explicit:.2f} |")


def run_cpu(only: list[str], repeats: int, threads: int) -> dict:
    """The CPU benchmarks named in `only` (logmel, mask, attention, attention_small,
    pos_conv), each
    printed as a table when it ends; the results by name."""
    sections = {"logmel": (lambda: bench_logmel(repeats), print_logmel),
                "mask": (lambda: bench_mask(repeats), print_mask),
                "attention": (lambda: bench_attention(threads), print_attention),
                "attention_small": (lambda: bench_attention_small(repeats), print_attention_small),
                "pos_conv": (lambda: bench_pos_conv(repeats), print_pos_conv)}
    result: dict = {"threads": threads}
    for name, (run, report) in sections.items():
        if name in only:
            result[name] = run()
            report(result[name])
    return result

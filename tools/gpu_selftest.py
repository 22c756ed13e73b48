"""Prove the project's own CUDA fast paths on this GPU; record which may run.

usage: python tools/gpu_selftest.py [--json out.json] [--dry-run]

torch's fused kernels (the `sdpa` attention path, torch.stft) need no proof and are the CUDA
defaults. FlexAttention (`attention_flex`) and the Triton log-Mel kernel (`logmel_triton`)
are enabled by `model.fast_paths: auto` only where this self-test found them exact *and*
faster than the default on this GPU model; the verdict is stored per GPU model + torch +
triton version in the venv's record (wavlm_ds/ops/gpu_gate.py). Checks, each with its own
pass/fail (one failure never disables the others):

* attention: sdpa and flex against the explicit-bias reference at T in {256, 800, 1000}
  with padded rows: the output and all five gradients (q, k, v, gate, rel_bias), fp32
  <= 1e-4 and bf16 <= 3e-2 relative; timings of forward + backward after warm-up (bf16,
  B=4, H=16, T=800) for reference, sdpa and flex;
* a compiled transformer block (regional torch.compile) against eager: loss and gradients;
* log-Mel: the Triton kernel against the gathered reference (<= 1e-3 on log values, a short
  and a silent row included), timings against the torch.stft path;
* no host sync: torch.cuda.set_sync_debug_mode("error") around the span masker and both
  log-Mel paths;
* CPU parts (run everywhere): the blocked and sdpa paths vs the reference, the masker's
  compiled core vs eager, the log-Mel fast path vs its reference.

`--dry-run` runs the CPU parts at tiny sizes (what CI checks); without CUDA nothing is
enabled and no record is written.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

from wavlm_ds.config import ModelConfig
from wavlm_ds.model.compile import compile_blocks
from wavlm_ds.model.encoder import Block
from wavlm_ds.ops import gpu_gate
from wavlm_ds.ops.attention import (attention_reference, flex_block_mask, flex_gated_attention,
                                    sdpa_gated_attention)
from wavlm_ds.ops.blocked_attention import blocked_attention
from wavlm_ds.ops.logmel import log_mel
from wavlm_ds.ops.span_mask import JITTER_BITS, max_spans, place_spans, span_mask


def attention_inputs(device, dtype, B=2, H=4, T=256, D=64):
    """q, k, v, gate, rel_bias (leaf tensors that require grad) and a padding mask with
    one full row and the others shorter (B, T) bool."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def make(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype).requires_grad_()

    gate = (2 * torch.rand(B, H, T, generator=g)).to(device, dtype).requires_grad_()
    tensors = [make(B, H, T, D), make(B, H, T, D), make(B, H, T, D), gate, make(H, 2 * T - 1)]
    lengths = torch.tensor([T] + [T - 57 * (i + 1) % T for i in range(B - 1)])
    return tensors, (torch.arange(T)[None] >= lengths[:, None]).to(device)


def flex_with_mask(q, k, v, gate, rel_bias, pad):
    return flex_gated_attention(q, k, v, gate, rel_bias, flex_block_mask(pad))


def max_rel_error(fn, ref_fn, tensors, pad) -> float:
    """Max relative error over the output and all five gradients (valid rows only)."""
    valid = (~pad)[:, None, :, None]
    results = []
    for f in (fn, ref_fn):
        for t in tensors:
            t.grad = None
        out = f(*tensors, pad)
        (out.float() * valid).sum().backward()
        results.append([(out.float() * valid).detach()] + [t.grad.float().clone() for t in tensors])
    return max(((a - b).abs().max() / b.abs().max().clamp(min=1e-6)).item()
               for a, b in zip(*results))


def timed(fn, repeats: int, warmup: int = 2) -> float:
    """Median seconds of fn() after warm-up, synchronizing the device around each call."""
    times = []
    for i in range(warmup + repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def check(report: dict, name: str, fn) -> bool:
    """Run one check; store its result or its error; never raise."""
    try:
        report[name] = {"ok": True, **fn()}
    except Exception as err:  # one failed check must not stop the others
        report[name] = {"ok": False, "error": f"{type(err).__name__}: {err}",
                        "trace": traceback.format_exc(limit=3)}
    return report[name]["ok"]


def cpu_checks(tiny: bool) -> dict:
    T = 64 if tiny else 128
    out = {}
    for name, fn in (("blocked", blocked_attention), ("sdpa", sdpa_gated_attention)):
        tensors, pad = attention_inputs("cpu", torch.float32, T=T, D=16)
        out[f"{name}_attention_fp32_rel_err"] = err = max_rel_error(fn, attention_reference,
                                                                    tensors, pad)
        if err > 1e-5:
            raise AssertionError(f"{name} attention: relative error {err:.2e} > 1e-5")
    lengths = torch.randint(1, 300, (8,), generator=torch.Generator().manual_seed(1))
    draws = torch.randint(0, 1 << JITTER_BITS, (8, max_spans(300, 0.8, 10) + 1))
    compiled = torch.compile(place_spans, fullgraph=True, dynamic=True)
    out["masker_compiled_equals_eager"] = bool(torch.equal(
        compiled(lengths, 300, 0.8, 10, draws), place_spans(lengths, 300, 0.8, 10, draws)))
    audio, lens = torch.randn(2, 32000) * 0.1, torch.tensor([32000, 20001])
    fast, _ = log_mel(audio, lens, impl="torch")
    ref, _ = log_mel(audio, lens, impl="reference")
    out["logmel_fast_vs_reference_max_abs"] = (fast - ref).abs().max().item()
    return out


def attention_parity(device) -> dict:
    out = {}
    for T in (256, 800, 1000):
        for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
            for name, fn in (("sdpa", sdpa_gated_attention), ("flex", flex_with_mask)):
                tensors, pad = attention_inputs(device, dtype, T=T)
                err = max_rel_error(fn, attention_reference, tensors, pad)
                out[f"{name}_T{T}_{str(dtype)[6:]}_rel_err"] = err
                if err > tol:
                    raise AssertionError(f"{name} T={T} {dtype}: relative error {err:.2e} > {tol}")
    return out


def attention_timings(device) -> dict:
    out = {}
    for name, fn in (("reference", attention_reference), ("sdpa", sdpa_gated_attention),
                     ("flex", flex_with_mask)):
        tensors, pad = attention_inputs(device, torch.bfloat16, B=4, H=16, T=800)
        out[f"time_{name}_fwd_bwd_s"] = timed(lambda: fn(*tensors, pad).sum().backward(), 10)
    return out


def compiled_block(device) -> dict:
    cfg = ModelConfig(model_dim=256, num_heads=4, ffn_dim=1024, dropout=0.0,
                      attention_dropout=0.0, attention_impl="sdpa")
    torch.manual_seed(0)
    eager = Block(cfg).to(device)
    compiled = Block(cfg).to(device)
    compiled.load_state_dict(eager.state_dict())
    holder = torch.nn.Module()
    holder.blocks = torch.nn.ModuleList([compiled])
    compile_blocks(holder)
    out = {}
    for T in (300, 431, 800):
        x = torch.randn(4, T, 256, device=device)
        rel = torch.randn(4, 2 * T - 1, device=device)
        pad = torch.arange(T, device=device)[None] >= torch.tensor([T, T, T - 40, T - 99],
                                                                   device=device)[:, None]
        grads = []
        for block in (eager, compiled):
            block.zero_grad()
            loss = block(x, rel, pad, None, "sdpa").square().mean()
            loss.backward()
            grads.append((loss.detach(), [p.grad.clone() for p in block.parameters()]))
        out[f"T{T}_loss_abs_diff"] = (grads[0][0] - grads[1][0]).abs().item()
        out[f"T{T}_grad_max_rel"] = max(((a - b).abs().max() / b.abs().max().clamp(min=1e-6)).item()
                                        for a, b in zip(grads[0][1], grads[1][1]))
        if out[f"T{T}_loss_abs_diff"] > 1e-4 or out[f"T{T}_grad_max_rel"] > 1e-3:
            raise AssertionError(f"compiled block differs from eager at T={T}: {out}")
    return out


def logmel_checks(device) -> dict:
    audio = torch.randn(4, 64000, device=device) * 0.1
    lens = torch.tensor([64000, 40001, 64000, 1000], device=device)
    audio[2] = 0.0  # digital silence
    fused, _ = log_mel(audio, lens, impl="triton")
    ref, _ = log_mel(audio, lens, impl="reference")
    out = {"triton_max_abs": (fused - ref).abs().max().item()}
    if out["triton_max_abs"] > 1e-3:
        raise AssertionError(f"Triton log-Mel differs from the reference by {out['triton_max_abs']:.2e}")
    big, big_lens = torch.randn(64, 256000, device=device) * 0.1, torch.full((64,), 256000,
                                                                              device=device)
    for impl in ("torch", "triton"):
        out[f"time_{impl}_s"] = timed(lambda: log_mel(big, big_lens, impl=impl), 20)
    return out


def no_host_sync(device) -> dict:
    lengths = torch.randint(100, 800, (64,), device=device)
    audio, lens = torch.randn(4, 64000, device=device), torch.full((4,), 64000, device=device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        span_mask(lengths, 800, generator=torch.Generator(device=device).manual_seed(0))
        log_mel(audio, lens, impl="torch")
        log_mel(audio, lens, impl="triton")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return {}


def cuda_checks(device: torch.device) -> tuple[dict, dict[str, bool]]:
    report: dict = {"device": torch.cuda.get_device_name(device)}
    for name, fn in (("attention_parity", attention_parity), ("attention_timings", attention_timings),
                     ("compiled_block", compiled_block), ("logmel", logmel_checks),
                     ("no_host_sync", no_host_sync)):
        check(report, name, lambda: fn(device))
    t = report["attention_timings"]
    flex_faster = t["ok"] and t["time_flex_fwd_bwd_s"] < t["time_sdpa_fwd_bwd_s"]
    lm = report["logmel"]
    triton_faster = lm["ok"] and lm["time_triton_s"] < lm["time_torch_s"]
    flex_exact = report["attention_parity"]["ok"]
    return report, {"attention_flex": bool(flex_exact and flex_faster),
                    "logmel_triton": bool(triton_faster and report["no_host_sync"]["ok"])}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", type=Path)
    p.add_argument("--dry-run", action="store_true", help="CPU parts only, tiny sizes")
    args = p.parse_args(argv)
    report: dict = {}
    check(report, "cpu", lambda: cpu_checks(args.dry_run))
    if torch.cuda.is_available() and not args.dry_run:
        device = torch.device("cuda")
        report["cuda"], ops = cuda_checks(device)
        report["record"] = str(gpu_gate.write_result(device, ops))
        report["enabled"] = ops
    else:
        report["cuda"] = "skipped: no CUDA device (or --dry-run); no fast path enabled"
        report["enabled"] = {}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    return 0 if report["cpu"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

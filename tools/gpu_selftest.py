"""Prove the CUDA fast paths on this GPU before the trainer may use them.

usage: python tools/gpu_selftest.py [--json out.json] [--force-record]

No GPU was available while the fast paths were written, so `attention_impl: auto` selects
FlexAttention only after this self-test passed on the user's GPU (the result is stored per
GPU model + torch + triton version, see wavlm_ds/ops/gpu_gate.py). Checks:

* attention: FlexAttention (score_mod = gate x rel_bias, key padding via block mask) vs
  the explicit-bias reference, outputs and gradients of q, k, v, gate and rel_bias
  (fp32 <= 1e-4, bf16 <= 2e-2 relative), plus timings;
* log-Mel: the fused Triton kernel (ops/triton_logmel.py) vs the gathered reference
  (max abs <= 1e-3 on log values, a short row and a silent row included), plus timings
  against the torch.stft path;
* no host sync: torch.cuda.set_sync_debug_mode("error") around the span masker and both
  log-Mel fast paths (any sync raises);
* CPU-runnable parts (run everywhere): the blocked attention vs the reference, the masker's
  compiled core vs eager, the log-Mel fast path vs its reference.

On a machine without CUDA, the CUDA checks are reported as skipped and nothing is enabled.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from wavlm_ds.ops import gpu_gate
from wavlm_ds.ops.attention import attention_reference, flex_gated_attention
from wavlm_ds.ops.blocked_attention import blocked_attention
from wavlm_ds.ops.logmel import log_mel
from wavlm_ds.ops.span_mask import JITTER_BITS, max_spans, place_spans, span_mask


def attention_inputs(device, dtype, B=2, H=4, T=256, D=64):
    g = torch.Generator(device="cpu").manual_seed(0)
    make = lambda *s: torch.randn(*s, generator=g).to(device, dtype).requires_grad_()  # noqa: E731
    tensors = [make(B, H, T, D) for _ in range(3)] + [make(B, H, T).sigmoid().detach().requires_grad_(),
                                                     make(H, 2 * T - 1)]
    pad = (torch.arange(T)[None] >= torch.tensor([T, T - 57])[:, None]).to(device)
    return tensors, pad


def compare(fn, ref_fn, tensors, pad, tol: float) -> float:
    """Max relative error over the output and all five gradients (valid rows only)."""
    valid = (~pad)[:, None, :, None]
    results = []
    for f in (fn, ref_fn):
        for t in tensors:
            t.grad = None
        out = f(*tensors, pad)
        (out.float() * valid).sum().backward()
        results.append([(out.float() * valid).detach()] + [t.grad.float().clone() for t in tensors])
    err = max(((a - b).abs().max() / b.abs().max().clamp(min=1e-6)).item()
              for a, b in zip(*results))
    if err > tol:
        raise AssertionError(f"relative error {err:.2e} > {tol:.0e}")
    return err


def cpu_checks() -> dict:
    tensors, pad = attention_inputs("cpu", torch.float32, T=128)
    out = {"blocked_attention_fp32_rel_err": compare(blocked_attention, attention_reference,
                                                     tensors, pad, 1e-5)}
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


def cuda_checks(device: torch.device) -> dict:
    out = {}
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        tensors, pad = attention_inputs(device, dtype)
        out[f"flex_{dtype}_rel_err"] = compare(flex_gated_attention, attention_reference,
                                               tensors, pad, tol)
    for name, fn in (("reference", attention_reference), ("flex", flex_gated_attention)):
        tensors, pad = attention_inputs(device, torch.bfloat16, B=4, H=16, T=800)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            fn(*tensors, pad).sum().backward()
        torch.cuda.synchronize()
        out[f"time_{name}_s"] = (time.perf_counter() - t0) / 5
    audio, lens = torch.randn(4, 64000, device=device) * 0.1, torch.tensor(
        [64000, 40001, 64000, 1000], device=device)
    audio[2] = 0.0  # digital silence
    fused, _ = log_mel(audio, lens, impl="triton")
    ref, _ = log_mel(audio, lens, impl="reference")
    out["logmel_triton_max_abs"] = err = (fused - ref).abs().max().item()
    if err > 1e-3:
        raise AssertionError(f"Triton log-Mel differs from the reference by {err:.2e} > 1e-3")
    for name, impl in (("torch", "torch"), ("triton", "triton")):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            log_mel(audio, lens, impl=impl)
        torch.cuda.synchronize()
        out[f"time_logmel_{name}_s"] = (time.perf_counter() - t0) / 10
    lengths = torch.randint(100, 800, (64,), device=device)
    audio, lens = torch.randn(4, 64000, device=device), torch.full((4,), 64000, device=device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        span_mask(lengths, 800, generator=torch.Generator(device=device).manual_seed(0))
        log_mel(audio, lens, impl="torch")
        log_mel(audio, lens, impl="triton")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    out["no_host_sync"] = True
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    report = {"cpu": cpu_checks()}
    if torch.cuda.is_available():
        device = torch.device("cuda")
        try:
            report["cuda"] = cuda_checks(device)
            passed = True
        except Exception as err:  # a failed parity check must disable, not crash
            report["cuda"] = {"error": f"{type(err).__name__}: {err}"}
            passed = False
        ops = {"attention": passed, "logmel": passed}
        report["record"] = str(gpu_gate.write_result(device, ops))
        report["enabled"] = ops
    else:
        report["cuda"] = "skipped: no CUDA device; no fast path enabled"
        report["enabled"] = {}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The GPU self-test: prove the project's own CUDA fast paths on this GPU, record which may run.

torch's fused kernels (the `sdpa` attention path, torch.stft) need no proof and are the CUDA
defaults. FlexAttention (`attention_flex`) and the Triton log-Mel kernel (`logmel_triton`)
run under `model.fast_paths: auto` only where this self-test found them exact *and* faster
than the default on this GPU model (the record: wavlm_ds/ops/gpu_gate.py). Two groups, run
alone or together (`tools/gpu_selftest.py --only sdpa|flex`); every check has its own
pass/fail, so one failure never disables another op:

* sdpa: parity of `sdpa_gated_attention` (output and all five gradients: q, k, v, gate,
  rel_bias) against an fp32 oracle (the explicit-bias reference on the *same* bf16 values
  cast to fp32) in fp32 at T=800 and in bf16 at T in {256, 800, 1000}, with padded rows;
  timings of forward + backward (bf16, B=4, H=16, T=800) of the reference and sdpa.
* flex: the same parity for FlexAttention; timings of sdpa and flex with the block mask
  built once outside the timer (the encoder builds it once per forward for all layers),
  then the verdict for `attention_flex` is recorded; no host sync in the masker and both
  log-Mel paths; Triton log-Mel vs the reference (<= 1e-3 on log values) and its timing vs
  torch.stft, then the verdict for `logmel_triton` is recorded; a compiled transformer block
  vs eager (loss and gradients), last since its compiles take longest.

Tolerances, as max |x - oracle| / max |oracle| for the output and each gradient (valid
rows): fp32 operands FP32_REL_TOL; bf16 operands BF16_REL_TOL. A bf16 operand carries a
relative rounding of up to 2^-8 = 3.9e-3, and through the softmax and the reductions the
output and the q/k/v/gate gradients of a right kernel land at ~1e-3 to 1e-2 against fp32.
rel_bias's gradient sums B x T bias gradients per entry held in bf16: BF16_SUM_REL_TOL (CPU
sdpa measured 0.028-0.032 at T 256-800, the explicit-bias math in bf16 0.036-0.069). A wrong
kernel (bad mask, bias or layout) is off by O(1).

Results are written after every check (`Report`), so a self-test cut at its time limit
still returns the checks it finished. Without CUDA, the CPU-runnable parts run (the blocked
and sdpa paths against the oracle, the masker's compiled core, the log-Mel fast path), the
CUDA checks are marked skipped, and no record is written.
"""
from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from wavlm_ds.config import ModelConfig
from wavlm_ds.jsonio import write_json_atomic
from wavlm_ds.model.compile import compile_blocks
from wavlm_ds.model.encoder import Block
from wavlm_ds.ops import gpu_gate
from wavlm_ds.ops.attention import (attention_reference, flex_block_mask, flex_gated_attention,
                                    sdpa_gated_attention)
from wavlm_ds.ops.blocked_attention import blocked_attention
from wavlm_ds.ops.logmel import log_mel
from wavlm_ds.ops.span_mask import JITTER_BITS, max_spans, place_spans, span_mask

FP32_REL_TOL = 1e-4
BF16_REL_TOL = 2e-2
BF16_SUM_REL_TOL = 6e-2  # rel_bias's gradient: a bf16 sum over B x T per entry
TENSORS = ("out", "q", "k", "v", "gate", "rel_bias")  # the output, then each gradient
# (T, dtype) in this order: fp32 once (is the kernel right?), then bf16 (the training dtype)
# at three lengths, two of them not multiples of 128; for compiled flex that is two graphs
# (static fp32, then dynamic-T bf16, which the timing at T=800 reuses), not six.
PARITY_CASES = ((800, torch.float32), (256, torch.bfloat16), (800, torch.bfloat16),
                (1000, torch.bfloat16))
CPU_CASES = ((64, torch.float32), (64, torch.bfloat16))
GROUPS = ("sdpa", "flex")


class Report:
    """The self-test's results, rewritten atomically to `path` after every check."""

    def __init__(self, path: Path | None, device: torch.device) -> None:
        self.path = path
        self.device = device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        self.data: dict = {"device": name, "tolerances": {
            "fp32": FP32_REL_TOL, "bf16": BF16_REL_TOL, "bf16_rel_bias_grad": BF16_SUM_REL_TOL},
            "checks": {}, "enabled": {}}
        self.write()

    def check(self, name: str, fn: Callable[[], dict]) -> dict:
        """Run one check; store its figures (or its error) and write; never raise."""
        t0 = time.perf_counter()
        try:
            entry = {"ok": True, **fn()}
        except Exception as err:  # one failed check must not stop the others
            entry = {"ok": False, "error": f"{type(err).__name__}: {err}",
                     "trace": traceback.format_exc(limit=3)}
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        self.data["checks"][name] = entry
        print(f"[selftest] {name}: {'ok' if entry['ok'] else 'FAILED'} ({entry['seconds']} s)",
              flush=True)
        self.write()
        return entry

    def record(self, op: str, passed: bool) -> None:
        """Store the verdict for one fast path in the record now (CUDA only)."""
        self.data["enabled"][op] = passed
        self.data["record"] = str(gpu_gate.write_result(self.device, {op: passed}))
        self.write()

    def write(self) -> None:
        if self.path is not None:
            write_json_atomic(self.path, self.data)


def attention_inputs(device, dtype, B=2, H=4, T=256, D=64):
    """q, k, v, gate, rel_bias (leaf tensors that require grad) and a padding mask (B, T)
    bool with one full row and the others shorter."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def make(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype).requires_grad_()

    gate = (2 * torch.rand(B, H, T, generator=g)).to(device, dtype).requires_grad_()
    tensors = [make(B, H, T, D), make(B, H, T, D), make(B, H, T, D), gate, make(H, 2 * T - 1)]
    lengths = torch.tensor([T] + [T - 57 * (i + 1) % T for i in range(B - 1)])
    return tensors, (torch.arange(T)[None] >= lengths[:, None]).to(device)


def flex_with_mask(q, k, v, gate, rel_bias, pad):
    return flex_gated_attention(q, k, v, gate, rel_bias, flex_block_mask(pad))


IMPLS = {"sdpa": sdpa_gated_attention, "flex": flex_with_mask, "blocked": blocked_attention}


def output_and_grads(fn, tensors, pad) -> list[torch.Tensor]:
    """fn's output on valid rows and the gradients of its valid sum, as fp32."""
    valid = (~pad)[:, None, :, None]
    for t in tensors:
        t.grad = None
    out = fn(*tensors, pad)
    (out.float() * valid).sum().backward()
    return [(out.float() * valid).detach()] + [t.grad.float().clone() for t in tensors]


def rel_errors_vs_fp32_oracle(fn, tensors, pad) -> dict[str, float]:
    """Relative error of fn (on `tensors` as given, e.g. bf16) for the output and each of
    the five gradients (TENSORS), against the reference run in fp32 on the same values."""
    oracle_inputs = [t.detach().float().requires_grad_() for t in tensors]
    oracle = output_and_grads(attention_reference, oracle_inputs, pad)
    got = output_and_grads(fn, tensors, pad)
    return {name: ((a - b).abs().max() / b.abs().max().clamp(min=1e-6)).item()
            for name, a, b in zip(TENSORS, got, oracle)}


def tolerance(dtype: torch.dtype, tensor: str) -> float:
    if dtype == torch.float32:
        return FP32_REL_TOL
    return BF16_SUM_REL_TOL if tensor == "rel_bias" else BF16_REL_TOL


def attention_parity(impl: str, device: torch.device, cases=PARITY_CASES, B=4, H=16,
                     D=64) -> dict:
    """Every case is measured before the verdict, so a miss shows all figures. B, H, D are
    the timing's, so that compiled flex reuses its graph there."""
    out, failed = {}, []
    for T, dtype in cases:
        tensors, pad = attention_inputs(device, dtype, B=B, H=H, T=T, D=D)
        key = f"T{T}_{str(dtype)[6:]}_rel_err"
        out[key] = errors = rel_errors_vs_fp32_oracle(IMPLS[impl], tensors, pad)
        failed += [f"{key}[{name}]={err:.2e} > {tolerance(dtype, name):g}"
                   for name, err in errors.items()
                   if not err <= tolerance(dtype, name)]  # NaN fails too
    if failed:
        out.update(ok=False, failed=failed)
    return out


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


def attention_timings(impls: tuple[str, ...], device: torch.device) -> dict:
    """Forward + backward seconds (bf16, B=4, H=16, T=800); flex's block mask is built
    before the timer, once, as the encoder builds it once per forward."""
    tensors, pad = attention_inputs(device, torch.bfloat16, B=4, H=16, T=800)
    block_mask = flex_block_mask(pad)
    calls = {"reference": lambda: attention_reference(*tensors, pad),
             "sdpa": lambda: sdpa_gated_attention(*tensors, pad),
             "flex": lambda: flex_gated_attention(*tensors, block_mask)}
    return {f"time_{name}_fwd_bwd_s": timed(lambda: calls[name]().sum().backward(), 10)
            for name in impls}


def compiled_block(device: torch.device) -> dict:
    cfg = ModelConfig(model_dim=256, num_heads=4, ffn_dim=1024, dropout=0.0,
                      attention_dropout=0.0, attention_impl="sdpa")
    torch.manual_seed(0)
    eager, compiled = Block(cfg).to(device), Block(cfg).to(device)
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
            out.update(ok=False, failed=[f"compiled block differs from eager at T={T}"])
    return out


def logmel_triton(device: torch.device) -> dict:
    audio = torch.randn(4, 64000, device=device) * 0.1
    lens = torch.tensor([64000, 40001, 64000, 1000], device=device)
    audio[2] = 0.0  # digital silence
    fused, _ = log_mel(audio, lens, impl="triton")
    ref, _ = log_mel(audio, lens, impl="reference")
    out = {"triton_max_abs": (fused - ref).abs().max().item()}
    if not out["triton_max_abs"] <= 1e-3:
        return dict(out, ok=False, failed=[f"Triton log-Mel off by {out['triton_max_abs']:.2e}"])
    big = torch.randn(64, 256000, device=device) * 0.1
    big_lens = torch.full((64,), 256000, device=device)
    for impl in ("torch", "triton"):
        out[f"time_{impl}_s"] = timed(lambda: log_mel(big, big_lens, impl=impl), 20)
    return out


def no_host_sync(device: torch.device) -> dict:
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


def cpu_masker_and_logmel(compile_masker: bool) -> dict:
    """The log-Mel fast path vs its reference and (unless a dry run: an inductor compile,
    ~30 s on a small CPU, which tests/unit/test_span_mask.py covers) the masker's compiled
    core vs eager."""
    audio, lens = torch.randn(2, 32000) * 0.1, torch.tensor([32000, 20001])
    fast, _ = log_mel(audio, lens, impl="torch")
    ref, _ = log_mel(audio, lens, impl="reference")
    out = {"logmel_fast_vs_reference_max_abs": (fast - ref).abs().max().item()}
    failed = [] if out["logmel_fast_vs_reference_max_abs"] <= 1e-4 else ["log-Mel fast path"]
    if compile_masker:
        lengths = torch.randint(1, 300, (8,), generator=torch.Generator().manual_seed(1))
        draws = torch.randint(0, 1 << JITTER_BITS, (8, max_spans(300, 0.8, 10) + 1))
        compiled = torch.compile(place_spans, fullgraph=True, dynamic=True)
        out["masker_compiled_equals_eager"] = same = bool(torch.equal(
            compiled(lengths, 300, 0.8, 10, draws), place_spans(lengths, 300, 0.8, 10, draws)))
        failed += [] if same else ["compiled masker"]
    if failed:
        out.update(ok=False, failed=[f"{name} differs from its reference" for name in failed])
    return out


def run_sdpa_group(report: Report, tiny: bool) -> None:
    device = report.device
    if device.type != "cuda":  # the CPU paths against the same oracle, small
        cases = CPU_CASES if tiny else tuple((2 * T, dtype) for T, dtype in CPU_CASES)
        for impl in ("blocked", "sdpa"):
            report.check(f"cpu_{impl}_parity",
                         lambda: attention_parity(impl, device, cases, B=2, H=4, D=16))
        return
    report.check("sdpa_parity", lambda: attention_parity("sdpa", device))
    report.check("sdpa_timing", lambda: attention_timings(("reference", "sdpa"), device))


def run_flex_group(report: Report, tiny: bool) -> None:
    device = report.device
    if device.type != "cuda":
        report.check("cpu_masker_and_logmel", lambda: cpu_masker_and_logmel(not tiny))
        report.data["checks"]["flex_parity"] = {"ok": None, "skipped": "needs CUDA"}
        report.write()
        return
    parity = report.check("flex_parity", lambda: attention_parity("flex", device))
    timing = report.check("flex_timing", lambda: attention_timings(("sdpa", "flex"), device))
    faster = timing["ok"] and timing["time_flex_fwd_bwd_s"] < timing["time_sdpa_fwd_bwd_s"]
    report.record("attention_flex", bool(parity["ok"] and faster))
    sync = report.check("no_host_sync", lambda: no_host_sync(device))
    lm = report.check("logmel_triton", lambda: logmel_triton(device))
    report.record("logmel_triton", bool(lm["ok"] and sync["ok"] and
                                        lm["time_triton_s"] < lm["time_torch_s"]))
    report.check("compiled_block", lambda: compiled_block(device))


def run_selftest(groups: tuple[str, ...], json_path: Path | None, tiny: bool = False) -> dict:
    """Run the named groups (of GROUPS) on CUDA if there is one (and not `tiny`), else on CPU;
    returns the report's data (also at json_path, rewritten after every check)."""
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown self-test group(s) {sorted(unknown)}; use {GROUPS}")
    cuda = torch.cuda.is_available() and not tiny
    report = Report(json_path, torch.device("cuda" if cuda else "cpu"))
    if not cuda:
        report.data["cuda"] = "skipped: no CUDA device (or --dry-run); no fast path enabled"
    for group in groups:
        {"sdpa": run_sdpa_group, "flex": run_flex_group}[group](report, tiny)
    report.data["ok"] = all(c["ok"] is not False for c in report.data["checks"].values())
    report.write()
    return report.data

"""Start-up numerics check: the run's encoder in its dtype against fp32, module by module.

Why: a wrong low-precision kernel shows up only as a worse loss at the end of a run, and only
on some machines (oneDNN's bf16 grouped conv1d on AMX CPUs: model.encoder.ConvPositionalEmbedding).
So before the first step, one forward and backward of the run's encoder at the run's
micro-batch shape (padding included) runs in the run's dtype, and each checked module (the
front end, the positional conv, every block, the final norm) is replayed by an fp32 twin
with the same weights (the run's weights cast up) on the same inputs (cast up), taking the
same output gradient. Outputs and parameter gradients are compared by relative error
||run - fp32|| / ||fp32||. Each module is compared on its own inputs, so an error does not
spread into the modules after it and the wrong one is the one named.

Bands (bf16; `python -m wavlm_ds.numerics`, 2026-12-04, AMD EPYC with AVX512-BF16, no AMX,
torch 2.11.0: the demo encoder at micro 4 x 6 s (5 seeds) and 2 x 3 s (3 seeds), the base
preset's widths at 1 x 4 s (2 seeds); BENCHMARKS.md, "Start-up numerics check"): right paths
measure forward 0.0016-0.0036, gradients 0.0023-0.0041 (the final norm's gradient norm
0.0002-0.0161). The wrong AMX conv measured 1.05-1.17 forward (SPEC.md), the whole demo
encoder with it 0.39. Forward band 0.03: 8x above the right paths, 35x below the wrong conv;
gradient band 0.05: 3x above the largest right value. fp16 gets the same bands (3 more
mantissa bits: right paths only measure lower).

On CUDA the 600M model needs no fp32 copy: only the positional conv and block 0 get twins.
The check runs the eager encoder (model.compile's kernels are the GPU self-test's subject).
The objective's heads are plain Linear layers and are not checked.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from wavlm_ds.config import ModelConfig, RunConfig
from wavlm_ds.model.encoder import WavLMEncoder
from wavlm_ds.ops.logmel import num_frames
from wavlm_ds.ops.span_mask import span_mask

FORWARD_BAND = 0.03  # right bf16 paths <= 0.0036 here; the wrong AMX conv >= 1.05
GRAD_BAND = 0.05  # right bf16 paths <= 0.0161 here (the final norm's gradient norm)
FP32_FIX = ('run in fp32: --precision fp32 (tools/demo.py, compare_objectives, bench_*) or '
            '"bf16": {"enabled": false} in the DeepSpeed JSON')
SKIP_FLAG = "--set training.numerics_check=false skips the check (not advised)"


class NumericsError(RuntimeError):
    """A module computes wrong in the run's dtype on this device; the message says the fix."""


@dataclass
class ModuleCheck:
    module: str
    forward_rel: float  # ||out_run - out_fp32|| / ||out_fp32||
    grad_rel: float  # the same over its parameter gradients (see _grad_error)
    grad_norm: float  # ||fp32 twin's parameter gradients|| (matrices, else all)
    grad_norm_run: float  # ||the run's parameter gradients|| (the same ones)

    @property
    def ok(self) -> bool:  # NaN compares False: a non-finite module fails
        return self.forward_rel <= FORWARD_BAND and self.grad_rel <= GRAD_BAND


@dataclass
class NumericsReport:
    dtype: str
    device: str
    shape: tuple[int, int]  # (micro batch, input frames)
    seconds: float
    rows: list[ModuleCheck] = field(default_factory=list)

    def failures(self) -> list[ModuleCheck]:
        return [r for r in self.rows if not r.ok]

    def summary(self) -> str:
        """One line for the console and the run summary."""
        worst_f = max(self.rows, key=lambda r: r.forward_rel)
        worst_g = max(self.rows, key=lambda r: r.grad_rel)
        return (f"numerics check {self.dtype} vs fp32 on {self.device}, micro-batch "
                f"{self.shape[0]} x {self.shape[1]} frames, {len(self.rows)} modules, "
                f"{self.seconds:.2f} s: largest forward error {worst_f.forward_rel:.4f} "
                f"({worst_f.module}), gradient {worst_g.grad_rel:.4f} ({worst_g.module}); "
                f"bands {FORWARD_BAND} / {GRAD_BAND}: "
                + ("passed" if not self.failures() else "FAILED"))

    def to_dict(self) -> dict:
        return {**asdict(self), "forward_band": FORWARD_BAND, "grad_band": GRAD_BAND,
                "passed": not self.failures()}

    def raise_if_failed(self) -> None:
        bad = self.failures()
        if not bad:
            return
        lines = [f"{r.module}: output differs from fp32 by {r.forward_rel:.3g} (relative; band "
                 f"{FORWARD_BAND}), parameter gradients by {r.grad_rel:.3g} (band {GRAD_BAND})"
                 for r in bad]
        raise NumericsError(
            f"{self.dtype} numerics check failed on {self.device}: this device computes "
            f"{', '.join(r.module for r in bad)} wrong in {self.dtype}.\n  " + "\n  ".join(lines)
            + f"\nFix: {FP32_FIX}. {SKIP_FLAG}.")


def checked_modules(encoder: WavLMEncoder, device: torch.device) -> dict[str, nn.Module]:
    """The modules that get fp32 twins: all of them on CPU; pos_conv and block 0 on CUDA."""
    if device.type != "cpu":
        return {"pos_conv": encoder.pos_conv, "blocks.0": encoder.blocks[0]}
    mods = {"frontend": encoder.frontend, "pos_conv": encoder.pos_conv}
    mods.update({f"blocks.{i}": b for i, b in enumerate(encoder.blocks)})
    mods["final_norm"] = encoder.final_norm
    return mods


def synthetic_batch(micro: int, frames: int, device: torch.device, mask_ratio: float = 0.8,
                    span: int = 10, seed: int = 0, mel_bins: int = 80) -> tuple[torch.Tensor, ...]:
    """A micro-batch of the run's shape: features (B, T, mel_bins) N(0, 1) as normalized
    log-Mel, lengths (B,) from T down to T/2 (padding exercised), span mask (B, T)."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(micro, frames, mel_bins, generator=gen)
    lengths = torch.linspace(frames, max(frames // 2, 1), micro).round().long()
    mask = span_mask(lengths, frames, ratio=mask_ratio, span=min(span, frames), generator=gen)
    return features.to(device), lengths.to(device), mask.to(device)


def _cast(value, dtype: torch.dtype):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach().to(dtype)
    return value


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _grads(module: nn.Module, matrices: bool) -> torch.Tensor:
    """The module's parameter gradients flattened: of its weight matrices and kernels
    (ndim >= 2) only, or of all its parameters."""
    return torch.cat([p.grad.reshape(-1).double() for p in module.parameters()
                      if p.grad is not None and (p.ndim >= 2 or not matrices)]
                     or [torch.zeros(0, dtype=torch.float64)])


def _grad_error(module: nn.Module, twin: nn.Module) -> tuple[float, float, float]:
    """(error, fp32 norm, run norm) of the parameter gradients. Weight matrices and kernels:
    relative error of the vector. A module with none (a LayerNorm): relative error of the
    gradient norm, since its weight and bias gradients are sums over all B x T rows that bf16
    accumulates (0.017-0.048 vector error on the final norm at 300-1204 rows, growing with
    the row count: a property of the dtype, not of a wrong kernel)."""
    matrices = any(p.ndim >= 2 for p in twin.parameters())
    g_run, g32 = _grads(module, matrices), _grads(twin, matrices)
    n_run, n32 = float(g_run.norm()), float(g32.norm())
    error = _rel(g_run, g32) if matrices else abs(n_run - n32) / max(n32, 1e-30)
    return error, n32, n_run


class _Recorder:
    """Forward hooks that keep each checked module's inputs, output and output gradient."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.calls: dict[str, dict] = {}
        self.handles = [m.register_forward_hook(self._hook(name), with_kwargs=True)
                        for name, m in modules.items()]

    def _hook(self, name: str):
        def hook(module, args, kwargs, output):
            call = self.calls[name] = {"args": args, "kwargs": kwargs, "out": output}
            if output.requires_grad:
                output.register_hook(lambda g: call.__setitem__("grad", g))
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def check_encoder(encoder: WavLMEncoder, batch: tuple[torch.Tensor, ...],
                  seed: int = 0) -> NumericsReport:
    """Check `encoder` (in the run's dtype, on its device) against fp32 twins of its
    checked modules, on `batch` (features, lengths, mask)."""
    t0 = time.perf_counter()
    param = next(encoder.parameters())
    device, dtype = param.device, param.dtype
    was_training = encoder.training
    encoder.eval()  # no dropout and no layerdrop: both sides see the same computation
    modules = checked_modules(encoder, device)
    twins = {name: copy.deepcopy(m).float() for name, m in modules.items()}
    recorder = _Recorder(modules)
    try:
        encoder.zero_grad(set_to_none=True)
        out = encoder(*batch).hidden
        probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
        (out.float() * probe.to(device)).sum().backward()  # every parameter gets a gradient
    finally:
        recorder.remove()
        encoder.train(was_training)
    rows = [_compare(name, modules[name], twins[name], recorder.calls[name])
            for name in modules]
    encoder.zero_grad(set_to_none=True)
    return NumericsReport(str(dtype).replace("torch.", ""), str(device),
                          tuple(batch[0].shape[:2]), time.perf_counter() - t0, rows)


def _compare(name: str, module: nn.Module, twin: nn.Module, call: dict) -> ModuleCheck:
    twin.eval()
    args = [_cast(a, torch.float32) for a in call["args"]]
    kwargs = {k: _cast(v, torch.float32) for k, v in call["kwargs"].items()}
    out32 = twin(*args, **kwargs)
    out32.backward(call["grad"].float())
    return ModuleCheck(name, _rel(call["out"], out32), *_grad_error(module, twin))


def check_run(model_cfg: ModelConfig, micro: int, frames: int, dtype: torch.dtype,
              device: torch.device, mask_ratio: float = 0.8, span: int = 10,
              seed: int = 0) -> NumericsReport:
    """The check for a run: a throwaway encoder of the run's config (the global RNG is left
    as it was), built on `device` in `dtype`, on a synthetic micro-batch of the run's shape."""
    from wavlm_ds.faults import wrong_in_low_precision  # the fault-injection point

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device):
            encoder = WavLMEncoder(model_cfg).to(dtype)
    wrong_in_low_precision(encoder)
    batch = synthetic_batch(micro, frames, device, mask_ratio, span, seed, model_cfg.num_mel_bins)
    return check_encoder(encoder, batch, seed)


def time_forward_backward(model_cfg: ModelConfig, micro: int, frames: int,
                          dtypes: tuple[torch.dtype, ...], device: torch.device,
                          reps: int = 3) -> dict[str, float]:
    """Median seconds of one training-mode forward + backward of the encoder per dtype,
    interleaved (dtype A, B, A, B, ...) after one warm-up each, so load drifts hit both."""
    batch = synthetic_batch(micro, frames, device, mel_bins=model_cfg.num_mel_bins)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        # every layer runs: layerdrop would give the two dtypes different work
        base = WavLMEncoder(dataclasses.replace(model_cfg, layerdrop=0.0)).to(device)
    models = {d: copy.deepcopy(base).to(d) for d in dtypes}
    times: dict[torch.dtype, list[float]] = {d: [] for d in dtypes}
    for rep in range(reps + 1):
        for d, model in models.items():
            t0 = time.perf_counter()
            model(*batch).hidden.float().sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if rep:  # rep 0 warms up
                times[d].append(time.perf_counter() - t0)
    return {str(d).replace("torch.", ""): sorted(t)[len(t) // 2] for d, t in times.items()}



def max_frames(cfg: RunConfig) -> int:
    """Input frames of the longest segment the run's data allow (data.max_duration_s)."""
    samples = torch.tensor([int(cfg.data.max_duration_s * 16000)])
    return int(num_frames(samples, cfg.data.logmel_mode)[0])


def run_dtype(ds_config: dict) -> torch.dtype | None:
    """The low-precision dtype a DeepSpeed JSON trains in, or None for fp32."""
    if ds_config.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled"):
        return torch.float16
    return None


def check_for_run(cfg: RunConfig, ds_config: dict, micro: int, device: torch.device,
                  say=print) -> dict | None:
    """The start-up check of train.py and the benchmarks: at the longest micro-batch the
    run's data allow (micro x data.max_duration_s), in the JSON's dtype. Says its summary
    line, raises NumericsError on a miss, returns the report as a dict for the run summary;
    None for an fp32 run or with training.numerics_check false."""
    dtype = run_dtype(ds_config)
    if dtype is None or not cfg.training.numerics_check:
        return None
    report = check_run(cfg.model, micro, max_frames(cfg), dtype, device,
                       cfg.masking.mask_ratio, cfg.masking.mask_span_frames, cfg.training.seed)
    say(report.summary())
    report.raise_if_failed()
    return report.to_dict()


def main(argv: list[str] | None = None) -> int:
    """Measure the bands: the check on a config's encoder over several seeds, in bf16 on CPU.

    usage: python -m wavlm_ds.numerics [--config configs/demo.yaml] [--micro 4]
               [--seconds 6] [--seeds 0 1 2] [--json out.json]
    """
    import argparse
    import json

    from wavlm_ds.config import load_config

    p = argparse.ArgumentParser(description=main.__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.set + [f"data.max_duration_s={args.seconds}"])
    reports = [check_run(cfg.model, args.micro, max_frames(cfg), torch.bfloat16, torch.device("cpu"),
                         seed=s) for s in args.seeds]
    print(f"{'module':<12} {'forward (min-max)':>20} {'gradient (min-max)':>20}")
    for i, row in enumerate(reports[0].rows):
        f = [r.rows[i].forward_rel for r in reports]
        g = [r.rows[i].grad_rel for r in reports]
        print(f"{row.module:<12} {min(f):>9.4f}-{max(f):<10.4f} {min(g):>9.4f}-{max(g):<10.4f}")
    print(f"bands: forward {FORWARD_BAND}, gradient {GRAD_BAND}; seconds per check: "
          + ", ".join(f"{r.seconds:.2f}" for r in reports))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.to_dict() for r in reports], f, indent=2)
    return 0 if all(not r.failures() for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""The GPU check: one command that measures on one CUDA GPU what a CPU cannot.

usage: tools/gpu_check.sh OUT_DIR [--dry-run]
       (= python -m wavlm_ds.bench.gpu_check OUT_DIR [--dry-run], with PYTHONPATH at the repo)

The figures that decide the recipe (MFU of large_plus, eager vs compiled, sdpa vs flex,
Triton vs torch log-Mel), in order of value, each stage under its own limit (STAGES; the
limits sum to BUDGET_S, under 7 minutes on one H200 with FusedAdam's build, which leaves a
15-minute device lease room for the machine's start and one rerun):

  wheels         install the wheels of .whl/ whose module does not import (wheelhouse.py)
  prebuild_ops   FusedAdam for this GPU (TORCH_CUDA_ARCH_LIST from it); if that fails, the
                 benchmarks run with torch's AdamW (`torch_adam`, marked in the JSON)
  selftest_sdpa  sdpa vs an fp32 oracle (outputs + 5 gradients), timings
  eager          large_plus, micro 4 x 16 s, ZeRO-2 + bf16, model.compile=false; MFU vs the
                 measured bf16 matmul peak and the datasheet peak
  compiled       the same with model.compile=true (regional compile)
  selftest_flex  FlexAttention parity + timing, Triton log-Mel, no host sync, compiled block;
                 each verdict written to the record as it is decided
  sweep          eager, micro 2 and 8
  bucketed       compiled, micro 4, lengths uniform in 2-16 s bucketed as the loader (the
                 dynamic-T graph), and the no-grad eval forward timed
  ops            tools/bench_ops.py --device cuda (log-Mel, masker, attention variants)

OUT_DIR receives at most three files, named in letters, digits, '.', '_' and '-', at its top:
gpu_check.json (every stage's status, seconds and figures; rewritten atomically after each
stage and every few seconds while one runs, so a run killed at any point still returns what
finished), gpu_check.log (every stage's output, a stage past 2 MiB keeps its last lines)
and gpu_selftest_record.json (the self-test's verdicts, on CUDA). Stage files live in a
temporary work folder. `--dry-run` runs every stage at tiny sizes on the CPU (what CI
checks): no wheels needed, the venv's prebuilt ops, the recipe YAML with model.preset=debug.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wavlm_ds.bench.stages import Runner, Stage, Terminated, sigterm_raises

ROOT = Path(__file__).resolve().parents[2]
# Seconds on one H200 (estimates until a lease measures them), in the order they run.
STAGES = {"wheels": 15, "prebuild_ops": 80, "selftest_sdpa": 30, "eager": 50, "compiled": 75,
          "selftest_flex": 45, "sweep": 50, "bucketed": 40, "ops": 25}
BUDGET_S = sum(STAGES.values())  # 410 s = 6 min 50 s
DRY_RUN_SCALE = 4  # a dry run on a small shared CPU gets more time per stage
OUT_FILES = ("gpu_check.json", "gpu_check.log", "gpu_selftest_record.json")
# On the GPU the wheels' --target and FusedAdam's build live here, outside the temporary
# work folder, so that a second call on a still-warm machine reuses them (dry run: the work
# folder, and the venv's prebuilt ops).
GPU_CACHE = Path("/tmp/wavlm_ds_gpu_check")
ALWAYS = ("wheels", "prebuild_ops")  # what every other stage needs, run also under --only
RECIPE = ["--config", "configs/wavlm_large_plus.yaml", "--set", 'data.noise_shards=""',
          "--set", "logging.progress_bar=false"]


def bench_args(dry_run: bool) -> dict[str, list[str]]:
    """The bench_throughput arguments of each benchmark stage, at GPU or dry-run size."""
    if dry_run:
        base = RECIPE + ["--deepspeed_config", "ds_configs/cpu_smoke.json",
                         "--set", "model.preset=debug", "--seconds", "1", "--steps", "1",
                         "--warmup", "1"]
        sweep, bucketed = ["--sweep", "micro=1,2"], ["--min-seconds", "0.5", "--seconds", "1.5"]
        compile_bucketed = "false"  # CI compiles once (the compiled stage); the GPU twice
    else:
        base = RECIPE + ["--deepspeed_config", "ds_configs/a100x128_zero2_bf16.json",
                         "--seconds", "16", "--steps", "4", "--warmup", "2"]
        sweep, bucketed = ["--sweep", "micro=2,8", "--steps", "3", "--warmup", "1"], \
            ["--min-seconds", "2", "--seconds", "16"]
        compile_bucketed = "true"
    peak = [] if dry_run else ["--measure-peak"]
    return {"eager": base + ["--set", "model.compile=false"] + peak,
            "compiled": base + ["--set", "model.compile=true"] + peak,
            "sweep": base + ["--set", "model.compile=false"] + sweep,
            "bucketed": base + ["--set", f"model.compile={compile_bucketed}", "--eval-steps", "3"]
            + bucketed}


def plan(work: Path, dry_run: bool, cache: Path, py: str = sys.executable) -> list[Stage]:
    """Every stage of the check, in order, with its limit and command; stage JSONs in
    `work`, the wheels' target in `cache`."""
    scale = DRY_RUN_SCALE if dry_run else 1
    dry = ["--dry-run"] if dry_run else []
    bench = bench_args(dry_run)
    commands = {
        "wheels": ([py, "-m", "wavlm_ds.bench.wheelhouse", "install", str(ROOT / ".whl"),
                    str(cache / "site")], False),
        "prebuild_ops": ([py, "-m", "wavlm_ds.prebuild_ops"], False),
        "selftest_sdpa": ([py, "tools/gpu_selftest.py", "--only", "sdpa", *dry], True),
        "selftest_flex": ([py, "tools/gpu_selftest.py", "--only", "flex", *dry], True),
        "ops": ([py, "tools/bench_ops.py", *(["--only", "mask", "--repeats", "2"] if dry_run
                                            else ["--device", "cuda", "--repeats", "10"])], True),
    }
    stages = []
    for name, limit in STAGES.items():
        if name in bench:
            command, has_json = [py, "tools/bench_throughput.py", *bench[name]], True
        else:
            command, has_json = commands[name]
        result = work / f"{name}.json" if has_json else None
        json_args = ["--json", str(result)] if result else []
        stages.append(Stage(name, limit * scale, command + json_args, result,
                            uses_optimizer=name in bench))
    return stages


def stage_env(out: Path, cache: Path, dry_run: bool) -> dict[str, str]:
    """The stages' environment: the repo (and the wheels' folder) importable, the self-test
    record in OUT, on the GPU a fresh extension cache for the FusedAdam build."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", WAVLM_DS_SELFTEST_RECORD=str(out / OUT_FILES[2]))
    env.setdefault("OMP_NUM_THREADS", "1")
    paths = [str(ROOT), str(cache / "site")] + [p for p in [env.get("PYTHONPATH", "")] if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if not dry_run:
        env.setdefault("TORCH_EXTENSIONS_DIR", str(cache / "torch_extensions"))
    return env


def gpu_info() -> dict:
    """nvidia-smi's name, memory and driver of each GPU (empty where there is none)."""
    try:
        text = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {"gpus": [line.strip() for line in text.splitlines() if line.strip()]}


def first_row(result: dict | None) -> dict:
    rows = (result or {}).get("rows") or [{}]
    return {} if "error" in rows[0] else rows[0]


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def summarize(stages: list[Stage]) -> dict:
    """The figures a reader wants first, taken from the stages' results (None where a stage
    gave none): MFU per benchmark, flex/sdpa and Triton/torch time ratios, what is enabled."""
    result = collections.defaultdict(dict, {s.name: s.result or {} for s in stages})
    out: dict = {"device": result["eager"].get("device"),
                 "measured_peak_tflops": result["eager"].get("measured_peak_tflops")}
    for name in ("eager", "compiled", "bucketed"):
        row = first_row(result[name])
        out[name] = {k: row.get(k) for k in ("step_s", "first_step_s", "mfu", "mfu_vs_measured",
                                             "tflops_per_device", "peak_memory_gib",
                                             "attention_impl", "optimizer")}
    out["bucketed"].update({k: first_row(result["bucketed"]).get(k)
                            for k in ("padding_fraction", "eval_first_s", "eval_micro_s")})
    out["sweep"] = {f"micro_{r['micro']}": {k: r.get(k) for k in ("step_s", "mfu", "error")}
                    for r in result["sweep"].get("rows", [])}
    checks = result["selftest_flex"].get("checks", {})
    timing, lm = checks.get("flex_timing", {}), checks.get("logmel_triton", {})
    out["flex_over_sdpa_time"] = ratio(timing.get("time_flex_fwd_bwd_s"),
                                       timing.get("time_sdpa_fwd_bwd_s"))
    out["triton_over_torch_logmel_time"] = ratio(lm.get("time_triton_s"), lm.get("time_torch_s"))
    out["enabled_fast_paths"] = result["selftest_flex"].get("enabled")
    return out


def clear_stale_locks(cache: Path) -> None:
    """A build cut at its limit (or a call killed mid-build) leaves torch's `lock` files, on
    which every later JIT load of the cache would wait forever; only the check uses its own
    cache, so a lock there is stale."""
    for lock in (cache / "torch_extensions").glob("*/lock"):
        lock.unlink()


def prebuild_failure(stage: Stage, cache: Path) -> str:
    """Why the FusedAdam build failed (its last lines that are not warnings), for the JSON."""
    clear_stale_locks(cache)
    lines = [x for x in stage.last_lines if not re.search(r"WARNING|^W\d{4} ", x)]
    return (f"prebuild_ops {stage.status} after {stage.seconds} s (rc {stage.rc}): "
            + " | ".join(lines[-3:]) + "; the benchmarks ran with torch's AdamW (torch_adam)")


def select(stages: list[Stage], only: list[str] | None) -> None:
    """Mark the stages that `only` leaves out as skipped (the prerequisites always run)."""
    unknown = set(only or ()) - set(STAGES)
    if unknown:
        raise SystemExit(f"--only {','.join(sorted(unknown))}: no such stage; stages: "
                         f"{', '.join(STAGES)}")
    for stage in stages:
        if only and stage.name not in only and stage.name not in ALWAYS:
            stage.status, stage.last_lines = "skipped", ["not selected (--only)"]


def run_stages(runner: Runner, stages: list[Stage], cache: Path, fallback: dict) -> None:
    """The pending stages in order; after a failed FusedAdam build, `fallback` says so and
    the benchmarks get --torch-adam."""
    for stage in [s for s in stages if s.status == "pending"]:
        torch_adam = stage.uses_optimizer and fallback["torch_adam"]
        runner.run(stage, ["--torch-adam"] if torch_adam else [])
        print(f"== {stage.name}: {stage.status} ({stage.seconds} s)\n  "
              + "\n  ".join(stage.last_lines[-8:]), flush=True)
        if stage.name == "prebuild_ops" and stage.status != "ok":
            fallback.update(torch_adam=True, torch_adam_reason=prebuild_failure(stage, cache))


def run_check(out: Path, work: Path, dry_run: bool, stages: list[Stage] | None = None,
              only: list[str] | None = None, cache: Path | None = None) -> int:
    """Run every stage (default: `plan`'s; with `only`, those and ALWAYS) in order; returns
    0 when all that ran passed, 1 if any did not, 143 on SIGTERM."""
    cache = cache or (work if dry_run else GPU_CACHE)
    stages = plan(work, dry_run, cache) if stages is None else stages
    select(stages, only)
    budget = sum(s.limit_s for s in stages if s.status == "pending")
    header = {"check": "gpu_check", "dry_run": dry_run,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "budget_s": budget, "stage_limits_s": {s.name: s.limit_s for s in stages},
              "only": only, **gpu_info()}
    runner = Runner(out, header, budget, stage_env(out, cache, dry_run))
    runner.stages = stages
    fallback: dict = {"torch_adam": False}
    runner.extra = lambda: {**fallback, "summary": summarize(stages)}
    clear_stale_locks(cache)
    try:
        with sigterm_raises():
            run_stages(runner, stages, cache, fallback)
    except Terminated:
        for stage in stages:
            if stage.status == "pending":
                stage.status = "skipped"
                stage.last_lines = ["not run: the check received SIGTERM"]
        runner.write("killed")
        return 143
    runner.write("done")
    print(f"== done in {time.monotonic() - runner.t0:.0f} s: {out / OUT_FILES[0]}")
    return 0 if all(s.status in ("ok", "skipped") for s in stages) and \
        any(s.status == "ok" for s in stages) else 1


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--dry-run", action="store_true", help="every stage at tiny sizes on CPU")
    p.add_argument("--only", type=lambda x: x.split(","), default=None, metavar="STAGE,...",
                   help=f"run only these (and {', '.join(ALWAYS)}), e.g. for a second call")
    args = p.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    os.chdir(ROOT)
    try:
        return run_check(args.out_dir.resolve(), work, args.dry_run, only=args.only)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

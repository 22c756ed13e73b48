"""The embedded demo: synthesize a corpus, pretrain on 2 CPU ranks, export, summarize.

usage: python tools/demo.py [--run-dir runs/demo] [--utterances 400] [--steps N]
                            [--precision auto|bf16|fp32]

Steps: tools/synth_corpus.py (espeak-ng + sox, deterministic) -> shards with an index per
split -> `deepspeed --hostfile hostfiles/localhost train.py --config configs/demo.yaml
--deepspeed_config <run-dir>/ds_config.json` (2 ranks, ZeRO-2, FusedAdam, accumulation 4;
ds_configs/cpu_smoke.json in the precision `auto` picks for this encoder on this CPU: bf16
only where native, right by the numerics check and faster, else fp32, see
wavlm_ds/precision.py; printed with the reason) ->
tools/export.py -> a summary (summary.json + printed table) and curves. Rank 0's progress
(step, loss, ETA, validation) is printed while every rank's output goes to train.log.
Re-running resumes the training run if it was interrupted (--resume auto), in the precision
it started in (`auto` does not decide again mid-run).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from wavlm_ds.checkpoint import CheckpointManager
from wavlm_ds.config import load_config
from wavlm_ds.launch import ROOT, ProgressPrinter, run_training, train_command
from wavlm_ds.precision import (CHOICES, apply_precision, choose_cpu_precision,
                                resumed_precision)


def synthesize(corpus: Path, utterances: int) -> None:
    if (corpus / "train" / "index.json").is_file():
        print(f"[demo] corpus exists: {corpus}")
        return
    cmd = [sys.executable, str(ROOT / "tools" / "synth_corpus.py"), "--out", str(corpus),
           "--utterances", str(utterances), "--noise", "16"]
    print("[demo] $", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def corpus_overrides(corpus: Path, steps: int) -> list[str]:
    """--set items pointing configs/demo.yaml at a synthesized corpus, for `steps` steps."""
    return [f"data.sources=[{{name: synth, shards: {corpus / 'train' / 'index.json'}}}]",
            f"data.valid_shards={corpus / 'validation' / 'index.json'}",
            f"data.noise_shards={corpus / 'noise' / 'index.json'}",
            f"training.max_steps={steps}"]


def summarize(run_dir: Path, export_dir: Path, precision: dict) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    valid = [r for r in rows if r["split"] == "valid"]
    head, tail = train[:10], train[-10:]
    impls = [r for r in rows if r["split"] == "implementations"]
    summary = {
        "steps": train[-1]["step"],
        "train_loss_start": statistics.median(r["loss"] for r in head),
        "train_loss_end": statistics.median(r["loss"] for r in tail),
        "valid": valid[-1] if valid else None,
        "audio_s_per_s_median": statistics.median(r["audio_s_per_s"] for r in train),
        "step_time_s_median": statistics.median(r["step_time_s"] for r in train),
        "precision": precision, "export": str(export_dir), "curves": str(run_dir / "curves.png"),
        "implementations": {k: v for k, v in impls[-1].items() if k not in ("step", "split")}
        if impls else None}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def print_summary(s: dict) -> None:
    print("\n=== wavlm_ds demo summary ===")
    print(f"steps                      {s['steps']}")
    print(f"train loss (median of 10)  {s['train_loss_start']:.4f} -> {s['train_loss_end']:.4f}")
    if s["valid"]:
        v = s["valid"]
        print(f"valid loss                 {v['loss']:.4f}   baselines: predict-zero "
              f"{v['baseline_zero']:.4f}, span interpolation {v['baseline_interp']:.4f}")
        if "baseline_interp_input" in v:
            print(f"                           span interpolation of the model's input "
                  f"{v['baseline_interp_input']:.4f} (no full-segment statistics)")
    print(f"throughput (2 CPU ranks)   {s['audio_s_per_s_median']:.1f} s audio/s, "
          f"{s['step_time_s_median']:.2f} s/step (median), {s['precision']['dtype']}")
    print(f"export                     {s['export']}")
    print(f"curves                     {s['curves']}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    p.add_argument("--utterances", type=int, default=400)
    p.add_argument("--steps", type=int, default=None,
                   help="default: the scheduler's total_num_steps in ds_configs/cpu_smoke.json")
    p.add_argument("--precision", choices=CHOICES, default="auto")
    args = p.parse_args(argv)
    base = args.run_dir.resolve()
    corpus, run_dir, export_dir = base / "corpus", base / "run", base / "export"
    synthesize(corpus, args.utterances)
    ds = json.loads((ROOT / "ds_configs" / "cpu_smoke.json").read_text())
    steps = args.steps or ds["scheduler"]["params"]["total_num_steps"]
    config = ROOT / "configs" / "demo.yaml"
    cfg = load_config(config, corpus_overrides(corpus, steps))
    trained = run_dir / "ds_config.json"  # train.py's copy: the precision the run started in
    # Any complete checkpoint is this run's: manifest and sizes suffice (train.py hashes the
    # one it resumes from).
    has_checkpoint = CheckpointManager(run_dir / "checkpoints", 0, 1, 1).find_latest_valid(
        verify=False) is not None
    if trained.is_file() and has_checkpoint:
        try:
            precision = resumed_precision(args.precision, trained)
        except ValueError as err:
            print(f"[demo] {err}", file=sys.stderr)
            return 2
    else:
        precision = choose_cpu_precision(args.precision, cfg, ds["train_micro_batch_size_per_gpu"])
    print(f"[demo] precision {precision.dtype}: {precision.reason}", flush=True)
    ds["scheduler"]["params"]["total_num_steps"] = steps  # --steps N: the whole schedule in N
    ds_path = base / "ds_config.json"
    ds_path.write_text(json.dumps(apply_precision(ds, precision), indent=2))
    cmd = train_command(config, ds_path, run_dir, corpus_overrides(corpus, steps))
    print("[demo] $", " ".join(cmd), f"  (log: {run_dir / 'train.log'})", flush=True)
    code = run_training(cmd, run_dir / "train.log",
                        progress=ProgressPrinter(run_dir / "metrics.jsonl", steps, "[demo]"))
    if code != 0:
        print(f"[demo] training failed with exit code {code}; see {run_dir / 'train.log'}")
        return code
    subprocess.run([sys.executable, str(ROOT / "tools" / "export.py"), "model", str(run_dir),
                    "--out", str(export_dir)], check=True, cwd=ROOT)
    subprocess.run([sys.executable, str(ROOT / "tools" / "plot_run.py"), str(run_dir)],
                   check=True, cwd=ROOT)
    print_summary(summarize(run_dir, export_dir, {"dtype": precision.dtype,
                                                  "reason": precision.reason}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

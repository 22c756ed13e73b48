"""The pretraining objectives compared on the same data, steps and probes (`make compare`).

The library behind tools/compare_objectives.py (its docstring has the method): each
objective pretrains the demo recipe through the launcher and is exported; k-means labels
come from objectives/kmeans_labels.py (through tools/kmeans_labels.py), the second HuBERT
iteration clusters the middle block of the first k-means export; every export and log-Mel
then go through eval/report.py's probes, --probe-runs times.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from wavlm_ds.config import load_config
from wavlm_ds.eval import EvalError, cli
from wavlm_ds.eval.asr import FIELD
from wavlm_ds.eval.data import label_texts
from wavlm_ds.eval.f0 import references
from wavlm_ds.eval.pitch import TrackerConfig, checked_tracker
from wavlm_ds.eval.report import COLUMNS, METRIC_KEYS, differences, evaluate
from wavlm_ds.eval.upstream import load_upstream, logmel_upstream
from wavlm_ds.launch import ROOT, run_training, train_command
from wavlm_ds.precision import apply_precision, choose_cpu_precision


OBJECTIVES = ("reconstruction", "best_rq", "kmeans", "kmeans_it2")
SHOWN = ("WER %", "CER %", "F0-RMSE cents", "GPE %", "V/UV error %")


def objective_overrides(name: str, labels: Path, k: int) -> list[str]:
    if name in ("kmeans", "kmeans_it2"):
        return ["objective.name=kmeans", f"objective.num_classes={k}",
                "data.label_member=labels.npy", f"data.label_sidecar_dir={labels}"]
    return [f"objective.name={name}"]


def iteration2_layer(num_layers: int) -> int:
    """The layer HuBERT's second iteration clusters, scaled to our depth: HuBERT Base took
    the output of block 6 of 12, the middle one, so block ceil(num_layers / 2)."""
    return (num_layers + 1) // 2


def fit_labels(corpus: Path, labels: Path, k: int, features: str = "logmel",
               layer: int | None = None) -> None:
    if (labels / "kmeans.json").is_file():
        print(f"[compare] k-means labels exist: {labels}")
        return
    cmd = [sys.executable, str(ROOT / "tools" / "kmeans_labels.py"),
           str(corpus / "train" / "index.json"), str(corpus / "validation" / "index.json"),
           "--out", str(labels), "--k", str(k), "--features", features]
    cmd += ["--layer", str(layer)] if layer is not None else []
    print("[compare] $", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def second_iteration_labels(first_export: str, corpus: Path, labels: Path, k: int) -> dict:
    """Fit HuBERT iteration-2 labels on the iteration-1 export; returns what was clustered."""
    num_layers = json.loads((Path(first_export) / "config.json").read_text())["model"]["num_layers"]
    layer = iteration2_layer(num_layers)
    fit_labels(corpus, labels, k, first_export, layer)
    return {"features": first_export, "layer": layer, "num_layers": num_layers, "k": k}


def demo_ds_config(out: Path, corpus_set: list[str]) -> Path:
    """ds_configs/cpu_smoke.json in the precision `auto` picks for the demo encoder on this
    CPU (as the demo: wavlm_ds/precision.py)."""
    path = out / "ds_config.json"
    if not path.is_file():
        ds = json.loads((ROOT / "ds_configs" / "cpu_smoke.json").read_text())
        cfg = load_config(ROOT / "configs" / "demo.yaml", corpus_set)
        precision = choose_cpu_precision("auto", cfg, ds["train_micro_batch_size_per_gpu"])
        print(f"[compare] precision {precision.dtype}: {precision.reason}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(apply_precision(ds, precision), indent=2))
    return path


def pretrain(name: str, corpus_set: list[str], out: Path, labels: Path, k: int) -> dict:
    """Train (or resume) one objective on the corpus `corpus_set` (--set items) and export
    it; returns its last validation row."""
    run_dir, export_dir = out / name / "run", out / name / "export"
    if not (export_dir / "model.safetensors").is_file():
        overrides = [*corpus_set, "logging.progress_bar=false",
                     *objective_overrides(name, labels, k)]
        cmd = train_command(ROOT / "configs" / "demo.yaml", demo_ds_config(out, corpus_set), run_dir,
                            overrides)
        print(f"[compare] {name}: $", " ".join(cmd), f"  (log: {run_dir / 'train.log'})", flush=True)
        start = time.time()
        code = run_training(cmd, run_dir / "train.log")
        if code != 0:
            raise EvalError(f"{name}: training failed with exit code {code}; see "
                            f"{run_dir / 'train.log'}")
        print(f"[compare] {name}: trained in {time.time() - start:.0f} s", flush=True)
        subprocess.run([sys.executable, str(ROOT / "tools" / "export.py"), "model", str(run_dir),
                        "--out", str(export_dir)], check=True, cwd=ROOT)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in rows if r["split"] == "valid"]
    train = [r for r in rows if r["split"] == "train"]
    return {"export": str(export_dir), "valid": valid[-1] if valid else None,
            "steps": train[-1]["step"], "train_loss_first": train[0]["loss"],
            "train_loss_last": train[-1]["loss"]}


def markdown(runs: dict[str, dict], systems: dict[str, dict], diffs: dict[str, dict]) -> str:
    head = ["upstream", "valid loss (own objective)", "valid accuracy", *SHOWN,
            "WER vs log-Mel (paired)", "F0 cents vs log-Mel (paired)"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for label, res in systems.items():
        cells = [cli.fmt(res["metrics"][METRIC_KEYS[c][0]][METRIC_KEYS[c][1]], COLUMNS[c][2],
                         COLUMNS[c][3]) for c in SHOWN]
        run = runs.get(label)
        valid = run["valid"] if run else None
        loss = f"{valid['loss']:.3f}" if valid else "-"
        acc = f"{100 * valid['accuracy']:.1f} %" if valid and "accuracy" in valid else "-"
        if label in diffs:
            d = diffs[label]
            extra = [cli.fmt(d["WER %"], 100, 1), cli.fmt(d["F0-RMSE cents"], 1, 0)]
        else:
            extra = ["-", "-"]
        lines.append(f"| {label} | {loss} | {acc} | " + " | ".join(cells + extra) + " |")
    return "\n".join(lines)


def spread_markdown(names: list[str], seeds: list[int], diffs: list[dict[str, dict]]) -> str:
    """Per probe run: each objective's paired WER and F0 differences vs log-Mel; the mean
    over runs; how many runs ranked it first (lowest difference = best)."""
    cols = ["upstream"]
    for col, unit in (("WER %", "WER points"), ("F0-RMSE cents", "F0 cents")):
        cols += [f"{unit} vs log-Mel, seed {s}" for s in seeds] + [f"{unit}: mean", f"{unit}: best in"]
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    scale = {"WER %": (100, 1), "F0-RMSE cents": (1, 0)}
    for name in names:
        cells = [name]
        for col in ("WER %", "F0-RMSE cents"):
            k, digits = scale[col]
            vals = [k * d[name][col]["value"] for d in diffs]
            wins = sum(min(names, key=lambda n, d=d: d[n][col]["value"]) == name for d in diffs)
            cells += [f"{v:.{digits}f}" for v in vals]
            cells += [f"{sum(vals) / len(vals):.{digits}f}", f"{wins} of {len(diffs)}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(args: argparse.Namespace, synthesize: Callable[[Path, int], None],
            corpus_overrides: Callable[[Path, int], list[str]]) -> Path | None:
    """Pretrain each of args.objectives, probe every export args.probe_runs times next to
    log-Mel, write results.md (printed) and results.json into args.run_dir; returns
    results.md's path (None with --probe-runs 0: the exports only). `synthesize(corpus, utterances)` makes the demo corpus if missing and
    `corpus_overrides(corpus, steps)` points the demo recipe at it (tools/demo.py's)."""
    t0 = time.time()
    out, corpus = args.run_dir.resolve(), args.corpus.resolve()
    synthesize(corpus, 400)
    labels = {"kmeans": out / "labels", "kmeans_it2": out / "labels_it2"}
    if "kmeans" in args.objectives:
        fit_labels(corpus, labels["kmeans"], args.k)
    runs, it2 = {}, None
    for name in sorted(args.objectives, key=OBJECTIVES.index):  # kmeans before kmeans_it2
        if name == "kmeans_it2":
            it2 = second_iteration_labels(runs["kmeans"]["export"], corpus, labels[name], args.k)
        runs[name] = pretrain(name, corpus_overrides(corpus, args.steps), out,
                              labels.get(name, out), args.k)
    if args.probe_runs == 0:  # pretrain and export only
        for name, run in runs.items():
            print(f"[compare] {name}: export {run['export']} (valid {run['valid']})")
        return None

    settings, tracker = cli.probe_settings(args), TrackerConfig()
    check = checked_tracker(tracker)
    splits = cli.load_splits(args)
    ups = {name: load_upstream(run["export"], cli.export_live) for name, run in runs.items()}
    first = next(iter(ups.values()))
    targets = {s.name: (label_texts(s, FIELD["chars"]),
                        references([u.audio for u in s.utterances], first.stack,
                                   first.logmel_mode, tracker, f"praat {s.name}"))
               for s in splits}
    seeds = [args.seed + i for i in range(args.probe_runs)]
    per_seed = []  # (systems, diffs) for each probe seed
    for seed in seeds:
        st = dataclasses.replace(settings, seed=seed)
        systems = {name: evaluate(up, splits, targets, st, args) for name, up in ups.items()}
        systems["log-Mel baseline"] = evaluate(logmel_upstream(first.stack, first.logmel_mode),
                                               splits, targets, st, args)
        base = systems["log-Mel baseline"]
        per_seed.append((systems, {name: differences(systems[name], base, args.resamples,
                                                     args.seed) for name in ups}))
    systems, diffs = per_seed[0]
    table = markdown(runs, systems, diffs)
    spread = spread_markdown(list(ups), seeds, [d for _, d in per_seed])
    train_info, test_info = (cli.split_info(s) for s in splits)
    note = (f"Each objective: `configs/demo.yaml` ({first.info['num_layers']} x "
            f"{first.info['model_dim']}, {first.info['parameters'] / 1e6:.2f}M parameters), "
            f"{args.steps} steps on 2 CPU ranks, same seed and data; k-means: k={args.k} on "
            "log-Mel" + (f"; kmeans_it2: k={args.k} on block {it2['layer']} of "
                         f"{it2['num_layers']} of the kmeans export (HuBERT iteration 2: the "
                         "middle block), then pretrained from scratch" if it2 else "") +
            f". Probes trained on {train_info['utterances']} utterances, scored on "
            f"{test_info['utterances']} held-out utterances of other speakers; cells: value "
            f"[95% CI] (bootstrap over test utterances, {args.resamples} resamples), lower is "
            "better except accuracy. Validation losses are each objective's own (L1 on "
            "log-Mel vs cross-entropy) and not comparable across rows. Elapsed "
            f"{time.time() - t0:.0f} s.\n\nCommand: `{cli.command_line()}`")
    spread_note = (f"Probe seed {seeds[0]} above. Every probe trained {len(seeds)} times "
                   f"(seeds {', '.join(map(str, seeds))}), on every upstream and on log-Mel; "
                   "paired differences vs log-Mel from the same probe run (negative = better "
                   "than log-Mel), and in how many runs each objective had the lowest one:")
    md = table + "\n\n" + spread_note + "\n\n" + spread + "\n\n" + note + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(md)
    cli.write_json(out / "results.json", {
        "tool": "compare_objectives", "command": cli.command_line(), "runs": runs,
        "metrics": {k: v["metrics"] for k, v in systems.items()}, "difference": diffs,
        "probe_runs": [{"seed": seed, "metrics": {k: v["metrics"] for k, v in sy.items()},
                        "difference": d} for seed, (sy, d) in zip(seeds, per_seed)],
        "iteration2_labels": it2,
        "settings": {"probe": settings.as_dict(), "tracker_self_check": check, "k": args.k,
                     "steps": args.steps, "train": train_info, "test": test_info},
        "elapsed_s": time.time() - t0})
    print(md)
    return out / "results.md"

"""Compare the three pretraining objectives on the same data, steps and probes.

usage: python tools/compare_objectives.py [--run-dir runs/compare] [--corpus runs/demo/corpus]
           [--steps 300] [--k 100] [--objectives reconstruction,best_rq,kmeans,kmeans_it2]
           [--epochs 10] [--hidden 64] [--probe-runs 3]   (`make compare`)
       --probe-runs 0: pretrain and export only (tools/finetune_compare.py takes the exports)

For each objective, the demo recipe (configs/demo.yaml + ds_configs/cpu_smoke.json, 2 CPU
ranks through the deepspeed launcher, the same seed, data order and masks) pretrains for
--steps optimizer steps, and the export goes through both downstream probes of
tools/eval_report.py (CTC ASR, F0), next to the same probes on log-Mel. k-means targets
are fitted first by tools/kmeans_labels.py on log-Mel of the train split (HuBERT's first
iteration; --k clusters) and written as sidecar shards for train and validation.
`kmeans_it2` is HuBERT's second iteration: k-means (--k clusters) on one layer of the
`kmeans` run's export, chosen by HuBERT's rule (its Base model clustered block 6 of 12 for
iteration 2: the middle block, `iteration2_layer`), then a second pretraining run from
scratch on those labels, same steps. BEST-RQ uses its defaults (one 8192 x 16 codebook). Finished pieces are reused on a re-run (the
corpus, the labels, each export), so an interrupted comparison continues where it stopped.

The probes are trained --probe-runs times (seeds --seed, --seed + 1, ...) on every upstream,
log-Mel included: on the demo corpus one probe's WER moves by up to 20 points between seeds,
more than the objectives differ, so a ranking from one probe run is not evidence. The main
table is the first run's (with 95% bootstrap intervals over test utterances); a second table
gives each run's paired differences against log-Mel and how often each objective ranked
first.

Writes --run-dir/results.md (the README's table) and results.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from demo import corpus_overrides, synthesize  # tools/demo.py: the demo corpus and its --set items

from wavlm_ds.eval import cli
from wavlm_ds.eval.compare import OBJECTIVES, compare


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=Path("runs/compare"))
    p.add_argument("--corpus", type=Path, default=Path("runs/demo/corpus"),
                   help="synthesized (tools/synth_corpus.py, 400 utterances) if missing")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--k", type=int, default=100, help="k-means clusters (HuBERT iteration 1)")
    p.add_argument("--objectives", default=",".join(OBJECTIVES))
    cli.add_probe_args(p, epochs=10, hidden=64)
    p.add_argument("--max-train-utts", type=int, default=0)
    p.add_argument("--max-test-utts", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=30.0)
    p.add_argument("--probe-runs", type=int, default=3,
                   help="train every probe this many times, seeds --seed, --seed + 1, ...")
    args = p.parse_args(argv)
    if args.probe_runs < 0:
        p.error(f"--probe-runs {args.probe_runs}: must be >= 0 (0 skips the probes)")
    args.objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    unknown = [o for o in args.objectives if o not in OBJECTIVES]
    if unknown:
        p.error(f"--objectives: unknown {unknown}; choose from {', '.join(OBJECTIVES)}")
    if "kmeans_it2" in args.objectives and "kmeans" not in args.objectives:
        p.error("--objectives: kmeans_it2 clusters the kmeans run's export; list kmeans too")
    args.train, args.test = str(args.corpus / "train"), str(args.corpus / "test")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    cli.set_threads(args)
    results = compare(args, synthesize, corpus_overrides)
    if results is not None:
        print(f"[compare] wrote {results} and results.json")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, sys.argv[1:]))

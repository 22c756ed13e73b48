"""Results table: a pretrained encoder and the log-Mel baseline through both probes.

usage: python tools/eval_report.py [--upstream runs/demo/export] [--corpus runs/demo/corpus] \
           [--out-dir runs/demo/eval] [--epochs 10] [--hidden 64] [--downstream bilstm]

Trains the ASR (CTC, characters) and F0 probes on the corpus's train-split speakers and
scores them on the test-split speakers, once on the frozen encoder (softmax-weighted sum
of all its layers) and once on normalized log-Mel stacked to the same 20 ms frames. Each
number has a 95% bootstrap interval over test utterances; the pretrained-minus-baseline
difference has a *paired* interval (same resamples for both), which is what the verdict
reads. Writes `results.md` (the README includes it) and `results.json` into --out-dir.
The defaults (a small BiLSTM, few epochs) keep the demo corpus to a few minutes on 2 CPUs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wavlm_ds.eval import cli
from wavlm_ds.eval.report import report


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--upstream", default="runs/demo/export",
                   help="export dir, run dir or ZeRO checkpoint dir")
    p.add_argument("--corpus", type=Path, default=Path("runs/demo/corpus"),
                   help="holds train/ and test/ splits (tools/synth_corpus.py layout)")
    p.add_argument("--out-dir", type=Path, default=Path("runs/demo/eval"))
    cli.add_probe_args(p, epochs=10, hidden=64)
    p.add_argument("--max-train-utts", type=int, default=0)
    p.add_argument("--max-test-utts", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=30.0)
    args = p.parse_args(argv)
    args.train, args.test = str(args.corpus / "train"), str(args.corpus / "test")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    cli.set_threads(args)
    results = report(args)
    print(f"[eval_report] wrote {results} and results.json")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, sys.argv[1:]))

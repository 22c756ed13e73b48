"""`make finetune`: CTC fine-tuning of an export and of the same encoder from random
initialization (same data, steps and seed), the table with bootstrap intervals and their
paired difference, next to `make eval`'s frozen probes.

usage: python tools/finetune_compare.py --export DIR --corpus DIR --out-dir DIR [--jobs 2]
           [--probe-results runs/demo/eval/results.json] [finetune_ctc.py options]

Runs tools/finetune_ctc.py twice (OUT/pretrained, OUT/random; side by side with --jobs 2,
one thread each: the runs are independent), then writes OUT/results.md (the README quotes
it) and OUT/results.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from wavlm_ds.eval import EvalError, cli
from wavlm_ds.finetune.report import caption, paired, table


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--export", type=Path, required=True)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--probe-results", type=Path, help="eval_report's results.json (optional)")
    p.add_argument("--jobs", type=int, default=2, help="fine-tuning runs at a time")
    args, passthrough = p.parse_known_args(argv)
    inits = ("pretrained", "random")

    def one(init: str) -> float:
        t0 = time.time()
        subprocess.run([sys.executable, str(Path(__file__).with_name("finetune_ctc.py")),
                        str(args.export), "--corpus", str(args.corpus), "--out",
                        str(args.out_dir / init), "--init", init, *passthrough], check=True)
        return time.time() - t0

    try:
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            elapsed = dict(zip(inits, pool.map(one, inits)))
    except subprocess.CalledProcessError as err:
        raise EvalError(f"a fine-tuning run failed ({err}); its message is above") from None
    runs = {f"fine-tuned, {init} init": json.loads((args.out_dir / init / "summary.json").read_text())
            for init in inits}
    probe = None
    if args.probe_results and args.probe_results.is_file():
        probe = json.loads(args.probe_results.read_text())
    first = next(iter(runs.values()))
    resamples, seed = first["resamples"], first["settings"]["seed"]
    diff = paired(*runs.values(), resamples=resamples, seed=seed)
    md = "\n".join(table(runs, diff, probe) + ["", caption(first, elapsed, probe), "",
                   f"Command: `{cli.command_line()}`"]) + "\n"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.md").write_text(md)
    cli.write_json(args.out_dir / "results.json", {
        "tool": "finetune_compare", "command": cli.command_line(), "elapsed_s": elapsed,
        "runs": {k: {m: v[m] for m in ("wer", "cer", "settings", "encoder", "train_loss_curve")}
                 for k, v in runs.items()},
        "paired_difference": diff, "probe_results": str(args.probe_results) if probe else None})
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, sys.argv[1:]))

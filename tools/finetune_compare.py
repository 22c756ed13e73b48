"""`make finetune`: the label-efficiency table. CTC fine-tuning of each upstream and of the
same architecture from random initialization, at several labelled budgets and seeds, with
paired bootstrap intervals against random init; frozen-layer CER and frozen-probe rows.

usage: python tools/finetune_compare.py --upstream NAME=EXPORT [--upstream NAME=EXPORT ...]
           --corpus DIR --out-dir DIR [--budgets 20,100,300] [--max-steps 250,300,400]
           [--seeds 0,1,2] [--jobs 2] [--probe-results FILE ...] [--no-layers]
           [FinetuneSettings flags: --lr 3e-2 --encoder-lr-scale 0.1 ...]

Every cell (budget x upstream x seed; random init uses the first upstream's architecture)
is one run of wavlm_ds.finetune.loop.run in --jobs worker processes, one thread each,
with a line of progress per cell. Budget n of seed k is the first n utterances of fold k
of the train split (speaker-balanced, nested across budgets, disjoint across seeds where
the split allows: wavlm_ds.finetune.subsets); runs stop early on the validation split's
CER and the best-validation model is scored on the test split (other speakers).
Writes OUT/results.md (docs/finetune.md quotes it), OUT/results.json and OUT/cells/*.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from wavlm_ds.eval import EvalError, cli
from wavlm_ds.finetune import report
from wavlm_ds.finetune.args import add_settings_args, settings_from_args
from wavlm_ds.finetune.grid import GridSettings, Specs, cell_name, grid
from wavlm_ds.finetune.layers import LayerProbeSettings

PER_CELL = ("steps", "seed", "init")  # set by the grid, not by flags


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--upstream", action="append", required=True, metavar="NAME=EXPORT")
    p.add_argument("--corpus", type=Path, required=True, help="DIR/{train,validation,test}")
    p.add_argument("--out-dir", type=Path, required=True)
    g = GridSettings()
    p.add_argument("--budgets", type=ints, default=g.budgets, help="train utterances per cell")
    p.add_argument("--max-steps", type=ints, default=g.max_steps, help="step budget per budget")
    p.add_argument("--seeds", type=ints, default=g.seeds)
    p.add_argument("--jobs", type=int, default=g.jobs, help="worker processes, 1 thread each")
    p.add_argument("--resamples", type=int, default=g.resamples)
    p.add_argument("--probe-results", type=Path, nargs="*", default=[],
                   help="eval_report results.json files for the frozen-probe rows (optional)")
    p.add_argument("--no-layers", action="store_true", help="skip the frozen-layer CER table")
    add_settings_args(p, skip=PER_CELL)
    args = p.parse_args(argv)
    pairs = [u.split("=", 1) for u in args.upstream]
    if any(len(x) != 2 or not x[0] for x in pairs):
        p.error("--upstream takes NAME=EXPORT_DIR, e.g. reconstruction=runs/demo/export")
    args.upstreams = {name: path for name, path in pairs}
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    try:
        g = GridSettings(args.budgets, args.max_steps, args.seeds, args.jobs, args.resamples)
    except ValueError as err:
        raise EvalError(f"grid settings: {err}") from None
    base = settings_from_args(args, skip=PER_CELL)
    specs = Specs(*(str(args.corpus / x) for x in ("train", "validation", "test")), base.units)
    probes = [json.loads(f.read_text()) for f in args.probe_results if f.is_file()]
    result = grid(args.upstreams, specs, g, base,
                  None if args.no_layers else LayerProbeSettings(), lambda m: print(m, flush=True))
    result["settings"] = dataclasses.asdict(base)
    for cell in result["cells"]:
        name = cell_name(cell["upstream"], cell["budget"], cell["seed"])
        cli.write_json(args.out_dir / "cells" / f"{name}.json", cell)
    summary = report.summarize(result, args.resamples)
    md = report.markdown(summary, result, probes, args.jobs, args.resamples, cli.command_line())
    (args.out_dir / "results.md").write_text(md)
    cli.write_json(args.out_dir / "results.json", {
        "tool": "finetune_compare", "command": cli.command_line(), "grid": dataclasses.asdict(g),
        "settings": result["settings"], "upstreams": args.upstreams, "summary": summary,
        "layers": result["layers"], "subsets": result["subsets"], "splits": result["splits"],
        "train_pool": result["train_pool"], "elapsed_s": result["elapsed_s"],
        "probe_results": [str(f) for f in args.probe_results if f.is_file()]})
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, sys.argv[1:]))

"""F0 probe on frozen layers: F0-RMSE (Hz, cents), gross pitch error and V/UV error.

usage: python tools/eval_f0.py --upstream EXPORT_DIR|RUN_DIR|CHECKPOINT|logmel \
           --train SHARDS --test SHARDS [--downstream linear|bilstm] [--epochs 20] \
           [--floor-hz 60 --ceiling-hz 500] [--out runs/eval/f0_<upstream>.json]

Reference F0: Praat's autocorrelation tracker (parselmouth) on the clean audio, read at
the centre of each probe frame (20 ms: two stacked 10 ms log-Mel frames for both the
encoder and the log-Mel baseline; see wavlm_ds/eval/pitch.py). Before it is trusted on
speech, the tracker is checked on synthetic harmonic tones with known contours and the
tool stops if its RMSE exceeds --tracker-bound-cents. The probe (softmax-weighted layer
sum + linear/BiLSTM) regresses log-F0 and classifies voicing. F0-RMSE is over
reference-voiced frames; V/UV error over all frames; 95% bootstrap CIs over utterances.
Only audio is needed: the shards' transcripts are not used.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from wavlm_ds.eval import cli
from wavlm_ds.eval.f0 import references, run_f0
from wavlm_ds.eval.pitch import TRACKER_BOUND_CENTS, TrackerConfig, checked_tracker
from wavlm_ds.eval.upstream import extract


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    cli.add_upstream_args(p)
    cli.add_data_args(p, None, None)
    cli.add_probe_args(p)
    p.add_argument("--floor-hz", type=float, default=60.0, help="Praat pitch floor")
    p.add_argument("--ceiling-hz", type=float, default=500.0, help="Praat pitch ceiling")
    p.add_argument("--tracker-bound-cents", type=float, default=TRACKER_BOUND_CENTS)
    p.add_argument("--out", type=Path, help="JSON result (default runs/eval/f0_<name>.json)")
    args = p.parse_args(argv)
    cli.set_threads(args)
    settings = cli.probe_settings(args)
    tracker = TrackerConfig(floor_hz=args.floor_hz, ceiling_hz=args.ceiling_hz)
    t0 = time.time()
    check = checked_tracker(tracker, args.tracker_bound_cents)
    train, test = cli.load_splits(args)
    upstream = cli.upstream_from_args(args, cli.export_live)
    feats = {}
    for split in (train, test):
        audios = [u.audio for u in split.utterances]
        feats[split.name] = (
            extract(upstream, [u.key for u in split.utterances], audios, args.batch_seconds,
                    f"{split.name} features"),
            references(audios, upstream.stack, upstream.logmel_mode, tracker,
                       f"praat {split.name}"))
    res = run_f0(*feats["train"], *feats["test"], settings)
    result = {"tool": "eval_f0", "command": cli.command_line(), "upstream": upstream.info,
              "probe": settings.as_dict(), "frame_s": feats["train"][0].frame_s,
              "tracker": vars(tracker), "tracker_self_check": check,
              "train": cli.split_info(train), "test": cli.split_info(test),
              "metrics": res.probe.metrics(args.resamples, args.seed, "test split"),
              "constant_predictor": res.constant.metrics(args.resamples, args.seed, "test split"),
              "layer_weights": res.layer_weights, "train_loss_curve": res.train_curve,
              "elapsed_s": round(time.time() - t0, 1)}
    out = args.out or Path("runs/eval") / f"f0_{upstream.name}.json"
    cli.write_json(out, result)
    print("| upstream | F0-RMSE Hz | F0-RMSE cents | GPE % | V/UV error % |\n|---|---|---|---|---|")
    for name, m in ((upstream.name, result["metrics"]), ("constant", result["constant_predictor"])):
        print(f"| {name} | {cli.fmt(m['f0_rmse_hz'])} | {cli.fmt(m['f0_rmse_cents'], digits=0)} | "
              f"{cli.fmt(m['gpe'], 100)} | {cli.fmt(m['vuv_error'], 100)} |")
    print(f"[eval_f0] result: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, sys.argv[1:]))

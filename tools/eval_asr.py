"""ASR probe (SUPERB-style, frozen upstream): CTC on characters or phonemes -> WER and CER.

usage: python tools/eval_asr.py --upstream EXPORT_DIR|RUN_DIR|CHECKPOINT|logmel \
           --train SHARDS --test SHARDS [--downstream linear|bilstm] [--units chars|phonemes] \
           [--epochs 20] [--out runs/eval/asr_<upstream>.json]

The upstream is frozen; a softmax-weighted sum of all its layers (each standardized with
training-split statistics) feeds a linear layer or a 2-layer BiLSTM trained with CTC on
the `transcript` (or `phonemes`) field of the shards' per-sample .json. Greedy decoding;
WER and CER with jiwer on the held-out split, with 95% bootstrap intervals over
utterances. `--upstream logmel` is the baseline: the same probe on normalized log-Mel
(two 10 ms frames stacked into one 20 ms frame, as the encoder does). A run dir or a ZeRO
checkpoint is exported on the fly with tools/export.py. Writes JSON; prints a table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from wavlm_ds.eval import cli
from wavlm_ds.eval.asr import FIELD, asr_metrics, run_asr
from wavlm_ds.eval.data import label_texts
from wavlm_ds.eval.upstream import extract


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    cli.add_upstream_args(p)
    cli.add_data_args(p, None, None)
    cli.add_probe_args(p)
    p.add_argument("--units", choices=["chars", "phonemes"], default="chars")
    p.add_argument("--out", type=Path, help="JSON result (default runs/eval/asr_<name>.json)")
    args = p.parse_args(argv)
    cli.set_threads(args)
    settings = cli.probe_settings(args)
    t0 = time.time()
    train, test = cli.load_splits(args)
    # Labels first: a shard set without transcripts fails before any feature extraction.
    train_texts, test_texts = (label_texts(s, FIELD[args.units]) for s in (train, test))
    upstream = cli.upstream_from_args(args, cli.export_live)
    ftrain = extract(upstream, [u.key for u in train.utterances],
                     [u.audio for u in train.utterances], args.batch_seconds, "train features")
    ftest = extract(upstream, [u.key for u in test.utterances],
                    [u.audio for u in test.utterances], args.batch_seconds, "test features")
    res = run_asr(ftrain, train_texts, ftest, test_texts, settings, args.units)
    result = {"tool": "eval_asr", "command": cli.command_line(), "upstream": upstream.info,
              "units": args.units, "probe": settings.as_dict(), "frame_s": ftrain.frame_s,
              "train": cli.split_info(train), "test": cli.split_info(test),
              "metrics": asr_metrics(res, args.resamples, args.seed), **res.summary(),
              "elapsed_s": round(time.time() - t0, 1)}
    out = args.out or Path("runs/eval") / f"asr_{upstream.name}.json"
    cli.write_json(out, result)
    m = result["metrics"]
    print(f"| upstream | WER % (95% CI) | CER % (95% CI) | test utts |\n|---|---|---|---|\n"
          f"| {upstream.name} | {cli.fmt(m['wer'], 100)} | {cli.fmt(m['cer'], 100)} | "
          f"{len(test.utterances)} |")
    print(f"[eval_asr] result: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, sys.argv[1:]))

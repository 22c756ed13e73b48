"""CTC fine-tuning of an exported encoder on labelled shards, scored by WER/CER (jiwer).

usage: python tools/finetune_ctc.py EXPORT --corpus DIR --out DIR [--init pretrained|random]
           [--steps 300] [--head-only-steps 50] [--lr 3e-2] [--encoder-lr-scale 0.1]
           [--layer-decay 1.0] [--patience 4] [--valid-every-steps 25] [--units chars|phonemes]
           [--vocab FILE] [--threads N]   (every field of FinetuneSettings has a flag)
       deepspeed --hostfile hostfiles/localhost --no_ssh_check --master_addr 127.0.0.1 \\
           tools/finetune_ctc.py EXPORT --corpus DIR --out DIR   (one share of each batch per rank)

--corpus DIR reads DIR/train, DIR/validation and DIR/test (speakers of their own), or give
--train, --valid and --test (any shard spec tools/eval_asr.py takes). A linear CTC head on
the encoder's output trains alone for --head-only-steps, then the encoder with it at
--encoder-lr-scale times the head's lr (front end frozen unless --train-frontend), with
time and channel masking at fine-tuning rates and layerdrop; the validation CER is measured
every --valid-every-steps, training stops after --patience validations without a better
one, and the best-validation model is the one scored (greedy decoding) on the test split.
--init random fine-tunes the same architecture from random initialization (the baseline).
Writes OUT/summary.json (WER/CER with 95% bootstrap CIs, per-utterance counts, loss curve,
validation history), OUT/checkpoint/ (an export: encoder.* + ctc_head.*) and OUT/tokens.txt.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from wavlm_ds.eval import cli
from wavlm_ds.finetune.args import add_settings_args, settings_from_args
from wavlm_ds.finetune.loop import finetune


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("export", type=Path, help="export dir (tools/export.py model)")
    p.add_argument("--corpus", type=Path, help="DIR with train/, validation/ and test/ shard sets")
    p.add_argument("--train", help="train shard spec (default CORPUS/train)")
    p.add_argument("--valid", help="validation shard spec (default CORPUS/validation)")
    p.add_argument("--test", help="held-out shard spec (default CORPUS/test)")
    p.add_argument("--out", type=Path, required=True)
    add_settings_args(p)
    p.add_argument("--vocab", type=Path, help="symbols, one per line (default: the train split's)")
    p.add_argument("--max-seconds", type=float, default=30.0)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)  # deepspeed launcher
    args = p.parse_args(argv)
    if args.corpus:
        args.train = args.train or str(args.corpus / "train")
        args.valid = args.valid or str(args.corpus / "validation")
        args.test = args.test or str(args.corpus / "test")
    if not (args.train and args.valid and args.test):
        p.error("give --corpus DIR or all of --train, --valid and --test")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    cli.set_threads(args)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        torch.distributed.init_process_group("gloo" if not torch.cuda.is_available() else "nccl")
    vocab = args.vocab.read_text(encoding="utf-8").split("\n") if args.vocab else None
    summary = finetune(args.export, (args.train, args.valid, args.test), settings_from_args(args),
                       args.out, [v for v in vocab if v] if vocab else None, args.max_seconds,
                       args.resamples, rank, world)
    if world > 1:
        torch.distributed.destroy_process_group()
    if summary is not None:
        print(f"[finetune_ctc] {args.export} ({args.init}): WER {cli.fmt(summary['wer'], 100)} %, "
              f"CER {cli.fmt(summary['cer'], 100)} % on {summary['test']['utterances']} held-out "
              f"utterances (best validation CER {100 * summary['best_valid_cer']:.1f} % at step "
              f"{summary['best_step']} of {summary['steps_run']} run); {summary['elapsed_s']} s; "
              f"wrote {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, sys.argv[1:]))

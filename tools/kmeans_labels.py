"""Fit k-means on frame features of a sample of shards; write frame-rate label sidecar shards.

usage: python tools/kmeans_labels.py SHARDS [SHARDS ...] --out DIR [--k 100]
           [--features logmel | --features EXPORT_DIR --layer 6] [--fit-shards 16]
           [--max-fit-frames 500000] [--seed 0]

SHARDS: any data.sources spec (index.json, brace pattern, comma list); give the training
shards first (k-means is fitted on them only), then e.g. the validation shards, so that
they get labels too (file names must differ across specs).
Features, one vector per 20 ms encoder frame, computed the way training computes them:
  logmel       normalized log-Mel (wavlm_ds.ops.logmel) of the whole utterance, two 10 ms
               frames stacked (160 dims), as the encoder's front end stacks them (HuBERT
               iteration 1 uses MFCCs here);
  EXPORT_DIR   layer --layer of an encoder exported by tools/export.py (HuBERT's iterative
               refinement): 0 = input of the first block, i = output of block i.
k-means: sklearn MiniBatchKMeans on up to --max-fit-frames frames drawn from --fit-shards
shards (a seeded sample). Then every sample of every shard is labelled.

Writes, under --out: one tar per input shard with the same file name, holding one
`<key>.labels.npy` (int16, or int32 for k > 32767) per sample with label_frames(n) labels,
the count the pipeline checks; `centroids.npy` (k, dim); `kmeans.json` (k, feature source,
inertia, frames used, skipped shards and samples). Train with
  --set objective.name=kmeans --set objective.num_classes=K
  --set data.label_member=labels.npy --set data.label_sidecar_dir=DIR
Unreadable shards and undecodable samples are skipped and counted (the pipeline then skips
those samples too, as missing labels).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from wavlm_ds.config import ConfigError
from wavlm_ds.eval import EvalError
from wavlm_ds.eval.upstream import LOGMEL
from wavlm_ds.objectives.kmeans_labels import KMeansError, label_corpus, print_summary


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("shards", nargs="+", help="shard specs (index.json, brace pattern, list)")
    p.add_argument("--out", type=Path, required=True, help="sidecar directory to write")
    p.add_argument("--k", type=int, default=100, help="clusters (HuBERT: 100, then 500)")
    p.add_argument("--features", default=LOGMEL, help="`logmel` or an export dir")
    p.add_argument("--layer", type=int, default=None, help="layer of the export to cluster")
    p.add_argument("--logmel-mode", choices=["htk", "kaldi"], default="htk",
                   help="logmel only: data.logmel_mode of the training run")
    p.add_argument("--fit-shards", type=int, default=16, help="shards sampled for fitting")
    p.add_argument("--max-fit-frames", type=int, default=500_000)
    p.add_argument("--batch-seconds", type=float, default=60.0, help="audio per feature batch")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.command = shlex.join(["python", "tools/kmeans_labels.py", *argv])
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    try:
        summary = label_corpus(args.shards, args.out, args.k, args.features, args.layer,
                               args.logmel_mode, args.fit_shards, args.max_fit_frames,
                               args.batch_seconds, args.seed, args.command)
    except (KMeansError, ConfigError, EvalError) as err:
        print(f"kmeans_labels: error: {err}", file=sys.stderr)
        return 2
    print_summary(summary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Bytes read to resume the data stream, against the bytes consumed up to that position.

usage: python tools/bench_resume.py [--shards 36] [--per-shard 12] [--out runs/bench_resume]

Builds a synthetic corpus (wavlm_ds/data/shards.py, so every shard has its sample index) and
a copy of its index without sample indexes (a shard set made before they existed). For
each mode (finite epochs, resampled) and position (early, middle, late in the epoch) it
resumes one reader (1 rank, workers 0) there and counts the bytes read until the first
batch is delivered (that batch's own samples included), next to the bytes an uninterrupted
reader consumed to reach the position. Writes OUT/bench_resume.json beside the table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wavlm_ds.bench.resume import build_corpus, measure


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shards", type=int, default=36)
    p.add_argument("--per-shard", type=int, default=12)
    p.add_argument("--out", type=Path, default=Path("runs/bench_resume"))
    args = p.parse_args(argv)
    new, old = build_corpus(args.out, args.shards, args.per_shard)
    rows = measure(new, old)
    (args.out / "bench_resume.json").write_text(json.dumps(rows, indent=1))
    print("| mode | position | batch / epoch | consumed | resume before | resume after | "
          "after / largest shard |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['position']} | {r['batch']} / {r['epoch_batches']} | "
              f"{r['consumed_bytes'] / 1e6:.2f} MB | {r['before_bytes'] / 1e6:.2f} MB | "
              f"{r['after_bytes'] / 1e6:.3f} MB | {r['after_bytes'] / r['largest_shard_bytes']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Bytes read to resume the data stream, against the bytes consumed up to that position.

usage: python tools/bench_resume.py [--shards 36] [--per-shard 12] [--out runs/bench_resume]

Builds a synthetic corpus (tools/make_shards.py, so every shard has its sample index) and
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
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from wavlm_ds.config import DataConfig, SourceConfig
from wavlm_ds.data import TrainLoader
from wavlm_ds.data.index import INDEX_NAME, read_index
from wavlm_ds.data.shards import make_shards

SR = 16000
BATCH = 4
POSITIONS = {"early": 0.1, "middle": 0.5, "late": 0.9}


def build_corpus(out: Path, shards: int, per_shard: int, seed: int = 0) -> tuple[Path, Path]:
    """(index with sample indexes, index of the same shards without them)."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        entries = []
        for i in range(shards * per_shard):
            n = int(rng.uniform(1.0, 4.0) * SR)
            t = np.arange(n) / SR
            wav = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + \
                0.02 * rng.standard_normal(n)
            path = Path(tmp) / f"u{i:05d}.wav"
            sf.write(path, wav.astype(np.float32), SR)
            entries.append({"path": str(path), "rel": path.name})
        make_shards(entries, out / "with_index", max_samples=per_shard)
    old = out / "without_index"
    old.mkdir(parents=True, exist_ok=True)
    data = json.loads((out / "with_index" / INDEX_NAME).read_text())
    for s in data["shards"]:
        (old / s["name"]).unlink(missing_ok=True)
        (old / s["name"]).symlink_to((out / "with_index" / s["name"]).resolve())
        s["sample_index"] = ""
    (old / INDEX_NAME).write_text(json.dumps(data))
    return out / "with_index" / INDEX_NAME, old / INDEX_NAME


def bytes_read(index: Path, resampled: bool, position: int, resume: bool) -> int:
    """Bytes one reader reads: to resume at `position` and deliver one batch (resume),
    or to hand out `position` batches from the start (not resume)."""
    cfg = DataConfig(sources=(SourceConfig("s", str(index)),), resampled=resampled,
                     num_workers=0, shuffle_buffer=16, bucket_batches=2,
                     max_duration_s=4.0, min_duration_s=0.5)
    loader = TrainLoader(cfg, BATCH, 0, 1, seed=0)
    if resume:
        loader.load_state_dict({"epoch": 0, "batches_consumed": position})
    it = iter(loader)
    for _ in range(1 if resume else position):
        next(it)
    return int(loader.stats().get("bytes_read", 0))


def measure(new: Path, old: Path) -> list[dict]:
    shard_bytes = [s.bytes for s in read_index(new).shards]
    rows = []
    for resampled in (False, True):
        cfg = DataConfig(sources=(SourceConfig("s", str(new)),), resampled=resampled,
                         num_workers=0, max_duration_s=4.0, min_duration_s=0.5)
        epoch = TrainLoader(cfg, BATCH, 0, 1, seed=0).batches_per_epoch
        for name, frac in POSITIONS.items():
            pos = max(1, int(frac * epoch))
            rows.append({"mode": "resampled" if resampled else "finite", "position": name,
                         "batch": pos, "epoch_batches": epoch,
                         "consumed_bytes": bytes_read(new, resampled, pos, resume=False),
                         "before_bytes": bytes_read(old, resampled, pos, resume=True),
                         "after_bytes": bytes_read(new, resampled, pos, resume=True),
                         "largest_shard_bytes": max(shard_bytes)})
    return rows


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

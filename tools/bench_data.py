"""Data-path throughput: seconds of audio per second per CPU core through the real
TrainLoader (tar read + FLAC decode + crop + bucketing + collate), optionally + log-Mel.

usage: python tools/bench_data.py --speech DIR/index.json [--noise DIR/index.json]
                                  [--batches 40] [--json out.json]

Runs workers = 1 and 2 on each corpus and prints the FLAC compression ratio of each
(16-bit PCM bytes / FLAC bytes): noise compresses far worse, so it costs more to decode.
Also prints the padding fraction of one epoch of the speech corpus for several length-
bucketing windows (data.bucket_batches).
Per core = audio seconds / wall seconds / number of worker processes (the main process
only collates).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from wavlm_ds.config import DataConfig, SourceConfig
from wavlm_ds.data import TrainLoader
from wavlm_ds.data.index import read_index
from wavlm_ds.ops.logmel import log_mel


def compression_ratio(index_path: Path) -> float:
    index = read_index(index_path)
    pcm_bytes = sum(s.hours for s in index.shards) * 3600 * 16000 * 2
    return pcm_bytes / sum(s.bytes for s in index.shards)


def run(index_path: Path, workers: int, batches: int, features: bool) -> dict:
    cfg = DataConfig(sources=(SourceConfig("bench", str(index_path)),), num_workers=workers,
                     resampled=True, max_duration_s=16.0, min_duration_s=0.5, shuffle_buffer=16)
    loader = TrainLoader(cfg, batch_size=8, rank=0, world_size=1, seed=0)
    it = iter(loader)
    next(it)  # start-up (worker fork, first shard open) is not throughput
    seconds, t0 = 0.0, time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        seconds += float(batch["lengths"][batch["valid"]].sum()) / 16000
        if features:
            log_mel(batch["audio"], batch["lengths"])
    wall = time.perf_counter() - t0
    return {"workers": workers, "features": features, "audio_s": seconds, "wall_s": wall,
            "audio_s_per_s": seconds / wall, "audio_s_per_core_s": seconds / wall / max(workers, 1)}


def padding_fraction(index_path: Path, bucket_batches: int, batch: int = 4) -> float:
    """Padding share of one finite epoch (1 rank, no workers) at a bucketing window."""
    cfg = DataConfig(sources=(SourceConfig("pad", str(index_path)),), num_workers=0,
                     bucket_batches=bucket_batches, shuffle_buffer=64, max_duration_s=6.0,
                     min_duration_s=0.5)
    loader = TrainLoader(cfg, batch_size=batch, rank=0, world_size=1, seed=1234)
    it = iter(loader)
    for _ in range(loader.batches_per_epoch):
        next(it)
    return loader.stats()["padding_fraction"]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--speech", type=Path, required=True)
    p.add_argument("--noise", type=Path)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    results = []
    for name, path in (("speech", args.speech), ("noise", args.noise)):
        if path is None:
            continue
        ratio = compression_ratio(path)
        for workers in (1, 2):
            for features in (False, True):
                r = run(path, workers, args.batches, features)
                results.append({"corpus": name, "flac_ratio": ratio, **r})
    print("| corpus | FLAC ratio | workers | + log-Mel | audio s/s | audio s per core-s |\n"
          "|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['corpus']} | {r['flac_ratio']:.2f} | {r['workers']} | {r['features']} | "
              f"{r['audio_s_per_s']:.0f} | {r['audio_s_per_core_s']:.0f} |")
    padding = {bb: padding_fraction(args.speech, bb) for bb in (1, 8, 32)}
    print("\n| bucket_batches (demo batch 4, 6 s max) | padding fraction |\n|---|---|")
    for bb, frac in padding.items():
        print(f"| {bb} | {frac:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"throughput": results, "padding_fraction": padding},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

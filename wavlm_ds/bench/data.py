"""Data-path throughput and padding through the real TrainLoader (tools/bench_data.py)."""
from __future__ import annotations

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


def throughput(index_path: Path, workers: int, batches: int, features: bool) -> dict:
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

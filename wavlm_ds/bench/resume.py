"""Bytes read to resume the data stream, with and without sample indexes
(tools/bench_resume.py has the method)."""
from __future__ import annotations

import json
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

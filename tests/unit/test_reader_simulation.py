"""A 1,024-reader simulation: 128 ranks x 8 workers over a synthetic index of 10,240 shards
with uneven sample counts and durations (no audio), both modes.

Stated bounds, checked here: every rank gets the same batch count; finite mode: reader
loads (samples assigned per slot) within 3% of each other (measured 2.4%: 6,759..6,919),
balancing drops <= 2% of the samples (measured 0.75%); resampled mode: every reader
consumes the same K x batch samples, opening between 0.5x and 2x the mean number of shards
(measured 6..18, mean 10.7); one assignment of all 1,024 readers' shards (what each
worker computes at start-up) takes < 10 s (measured 0.05 s here; the time is printed).
"""
from __future__ import annotations

import random
import time

import numpy as np
import pytest

from wavlm_ds.config import DataConfig, SourceConfig
from wavlm_ds.data import TrainLoader
from wavlm_ds.data.index import ShardInfo, write_index
from wavlm_ds.data.loader import assign_slots
from wavlm_ds.seeding import hash_seed

RANKS, WORKERS, BATCH, SHARDS = 128, 8, 4, 10_240


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    rng = np.random.default_rng(0)
    counts = np.clip(rng.lognormal(np.log(600), 0.5, SHARDS), 50, 4000).astype(int)
    infos = [ShardInfo(f"s-{i:06d}.tar", int(n), float(n * rng.uniform(4, 16) / 3600),
                       int(n) * 200_000, "0" * 64) for i, n in enumerate(counts)]
    return write_index(tmp_path_factory.mktemp("sim"), infos)  # no tars: metadata only


def loaders(index, resampled: bool) -> list[TrainLoader]:
    cfg = DataConfig(sources=(SourceConfig("big", str(index)),), resampled=resampled,
                     num_workers=WORKERS)
    return [TrainLoader(cfg, BATCH, rank, RANKS, seed=1) for rank in range(RANKS)]


def test_finite_epoch_equal_batches_balanced_loads(index):
    ranks = loaders(index, resampled=False)
    shards = ranks[0].sources[0]
    t0 = time.perf_counter()
    slots = assign_slots(shards, RANKS * WORKERS, BATCH, seed=1, epoch=0)
    planning_s = time.perf_counter() - t0
    print(f"\nfinite: one assignment of {SHARDS} shards to {len(slots)} readers: "
          f"{planning_s:.3f} s")
    assert planning_s < 10
    assert {L.batches_per_epoch for L in ranks[:4] + ranks[-4:]} == {slots[0].num_batches * WORKERS}
    assert [s.shards for s in slots[:WORKERS]] == [ranks[0].slot(0, r).shards for r in range(WORKERS)]
    loads = [sum(s.num_samples for s in slot.shards) for slot in slots]
    assert sorted(s.url for slot in slots for s in slot.shards) == sorted(s.url for s in shards)
    assert max(loads) / min(loads) <= 1.03, (min(loads), max(loads))
    total = sum(loads)
    dropped = total - len(slots) * slots[0].num_batches * BATCH
    print(f"finite: loads {min(loads)}..{max(loads)} samples per reader, "
          f"balancing drops {dropped} of {total} ({dropped / total:.3%})")
    assert 0 <= dropped <= 0.02 * total


def test_resampled_epoch_equal_batches_bounded_shard_reads(index):
    ranks = loaders(index, resampled=True)
    shards = ranks[0].sources[0]
    counts = [s.num_samples for s in shards]
    per_reader = ranks[0].slot(0, 0).num_batches * BATCH
    assert len({L.batches_per_epoch for L in ranks}) == 1
    assert per_reader * RANKS * WORKERS >= sum(counts)  # one nominal corpus pass
    t0 = time.perf_counter()
    opened = []
    for rank in range(RANKS):
        for role in range(WORKERS):  # the draws _resampled makes, on counts only
            rng = random.Random(hash_seed(1, 0, rank, role, "sources"))
            need, n = per_reader, 0
            while need > 0:
                need -= rng.choice(shards).num_samples
                n += 1
            opened.append(n)
    print(f"\nresampled: {per_reader} samples per reader, shards opened "
          f"{min(opened)}..{max(opened)} (mean {np.mean(opened):.1f}); "
          f"simulated in {time.perf_counter() - t0:.2f} s")
    assert 0.5 * np.mean(opened) <= min(opened) and max(opened) <= 2 * np.mean(opened)

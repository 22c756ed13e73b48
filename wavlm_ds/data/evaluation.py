"""EvalLoader: every validation sample evaluated exactly once, at any world size.

The validation set is split by samples, not shards: the samples, in index order, are cut
into `world` contiguous ranges of floor/ceil(N / world) samples, and rank r reads only the
shards its range touches. Every rank runs the same number of batches, ceil(ceil(N / world)
/ batch) (capped at training.eval_batches), filling rows it has no sample for (or whose
sample was rejected) with invalid rows, so collectives stay in step even on a rank with no
share at all. No shuffle, no mixing, the first max_duration_s of each utterance.
"""
from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path
from typing import Iterator

from wavlm_ds.config import ConfigError, DataConfig
from wavlm_ds.data.index import count_samples
from wavlm_ds.data.io import is_url, redact
from wavlm_ds.data.pipeline import collate, decode_crop, read_samples
from wavlm_ds.data.spec import Shard, expand_spec

KEY = "data.valid_shards"


def sample_counts(shards: list[Shard]) -> list[int]:
    """Samples per shard: from the index, else counted from a local tar's headers."""
    counts = []
    for shard in shards:
        if shard.num_samples is not None:
            counts.append(shard.num_samples)
        elif shard.url.startswith("pipe:") or is_url(shard.url):
            raise ConfigError(f"{KEY}: no sample count for {redact(shard.url)}; validation "
                              "splits by samples and needs them: point it at an index.json "
                              "(tools/make_shards.py writes one)")
        else:
            counts.append(count_samples(Path(shard.url))[0])
    return counts


def rank_pieces(counts: list[int], rank: int, world: int) -> list[tuple[int, int, int]]:
    """(shard number, first, end) sample positions within each shard that rank's
    contiguous range [rank N / world, (rank + 1) N / world) touches."""
    total = sum(counts)
    lo, hi = rank * total // world, (rank + 1) * total // world
    pieces, offset = [], 0
    for i, n in enumerate(counts):
        a, b = max(lo, offset), min(hi, offset + n)
        if a < b:
            pieces.append((i, a - offset, b - offset))
        offset += n
    return pieces


class EvalLoader:
    """Deterministic held-out batches; see the module docstring."""

    def __init__(self, spec: str, batch_size: int, rank: int, world_size: int,
                 max_batches: int, cfg: DataConfig | None = None) -> None:
        self.cfg = cfg or DataConfig()
        self.shards = expand_spec(spec, self.cfg.allow_pipe, KEY)
        counts = sample_counts(self.shards)
        self.total = sum(counts)
        if self.total == 0:
            raise ConfigError(f"{KEY}: the validation set {redact(spec)!r} holds no sample; "
                              "point it at shards with samples, or set it to '' to disable "
                              "validation")
        self.pieces = rank_pieces(counts, rank, world_size)
        per_rank = math.ceil(self.total / world_size)
        self.num_batches = min(max_batches, math.ceil(per_rank / batch_size))
        self.batch_size = batch_size

    def _samples(self, stats: Counter) -> Iterator:
        for i, first, end in self.pieces:
            shard = self.shards[i]
            rows = read_samples(shard.url, self.cfg, stats, shard.num_samples,
                                with_rejected=True)
            got = 0
            for sample in itertools.islice(rows, first, end):
                got += 1
                yield sample
            yield from [None] * (end - first - got)  # lost to damage: invalid rows

    def __iter__(self) -> Iterator[dict]:
        stats: Counter = Counter()
        samples = self._samples(stats)
        for _ in range(self.num_batches):
            meta = [next(samples, None) for _ in range(self.batch_size)]
            wavs = [decode_crop(m, self.cfg, 0, 0, stats, random_crop=False) if m else None
                    for m in meta]
            yield collate(wavs, [m.key if m else "" for m in meta], 0)

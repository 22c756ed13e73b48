"""TrainLoader: slots, shuffling, bucketing, workers and the resumable state.

See wavlm_ds/data/pipeline.py for the batch dict, the determinism rules and the resume
mechanism. Modes: finite epochs (data.resampled: false; shards assigned without
replacement, exactly K batches per slot) and resampled (infinite: every worker draws shards
with replacement; several sources mixed per sample by weight; an "epoch" is a nominal
number of batches used only to reseed).
"""
from __future__ import annotations

import atexit
import heapq
import logging
import math
import multiprocessing.util  # registers its exit handler before ours (see below)
import random
import signal
from collections import Counter
from typing import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from wavlm_ds.config import ConfigError, DataConfig
from wavlm_ds.data.io import redact
from wavlm_ds.data.pipeline import (Replay, Sample, Slot, collate, decode_crop, read_samples,
                                    replay_shard)
from wavlm_ds.data.sample_index import load_sample_index
from wavlm_ds.data.spec import Shard, expand_spec
from wavlm_ds.seeding import hash_seed

log = logging.getLogger(__name__)
REINDEX_FIX = "python tools/make_shards.py --reindex DIR/index.json (adds sample indexes)"
RESAMPLED_EPOCH_DEFAULT = 1000  # nominal batches per worker and epoch when counts are unknown


def assign_slots(shards: list[Shard], slots: int, batch_size: int, seed: int,
                 epoch: int) -> list[Slot]:
    """Balanced, deterministic shard -> slot assignment for one epoch (largest first)."""
    order = list(shards)
    random.Random(hash_seed(seed, epoch, "shards")).shuffle(order)
    lists: list[list[Shard]] = [[] for _ in range(slots)]
    loads = [0] * slots
    heap = [(0, i) for i in range(slots)]  # (load, slot): the least loaded, lowest index first
    for shard in sorted(order, key=lambda s: -s.num_samples):  # stable: ties keep the shuffle
        load, target = heapq.heappop(heap)
        lists[target].append(shard)
        loads[target] = load + shard.num_samples
        heapq.heappush(heap, (loads[target], target))
    for i, lst in enumerate(lists):
        random.Random(hash_seed(seed, epoch, "slot", i)).shuffle(lst)
    per_slot = min(loads) // batch_size
    return [Slot(lst, per_slot) for lst in lists]


def shuffle_buffer(items: Iterator, size: int, rng: random.Random) -> Iterator:
    buf = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        buf[i], item = item, buf[i]
        yield item
    rng.shuffle(buf)
    yield from buf


def bucket_batches(items: Iterator[Sample], batch_size: int, window: int,
                   rng: random.Random) -> Iterator[list[Sample]]:
    """Sort `window` batches' worth of samples by duration, cut, shuffle the batch order."""
    pool: list[Sample] = []
    for item in items:
        pool.append(item)
        if len(pool) == batch_size * window:
            yield from _cut(pool, batch_size, rng)
            pool = []
    if pool:
        yield from _cut(pool, batch_size, rng)


def _cut(pool: list[Sample], batch_size: int, rng: random.Random) -> list[list[Sample]]:
    pool.sort(key=lambda s: (s.duration_s, s.key))
    batches = [pool[i:i + batch_size] for i in range(0, len(pool), batch_size)]
    rng.shuffle(batches)
    return batches


class _SlotStream(IterableDataset):
    """Runs inside each DataLoader worker: the batches of one (rank, role) slot, epoch after
    epoch from `epoch` on (one DataLoader and one set of workers for the whole run).

    The DataLoader hands out batch n from worker n % W. Resuming at `consumed` batches into
    an epoch, worker w takes role (w + consumed) % W and skips the batches of that role
    already handed out; since every slot of an epoch yields exactly K batches, each worker
    keeps its role in the epochs that follow (skipping nothing), and the order is the one a
    fresh DataLoader per epoch would give."""

    def __init__(self, loader: "TrainLoader", epoch: int, consumed: int) -> None:
        self.loader, self.epoch, self.consumed = loader, epoch, consumed

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, W = (info.id, info.num_workers) if info else (0, 1)
        role = (worker + self.consumed) % W  # the DataLoader starts at worker 0: rotate roles
        skip = max(0, (self.consumed - role + W - 1) // W)
        epoch = self.epoch
        while True:
            yield from self._epoch(epoch, role, skip)
            epoch, skip = epoch + 1, 0

    def _epoch(self, epoch: int, role: int, skip: int) -> Iterator[dict]:
        L = self.loader
        slot = L.slot(epoch, role)
        stats: Counter = Counter()
        rng = random.Random(hash_seed(L.seed, epoch, L.rank, role, "order"))
        replay = Replay(skip > 0)
        samples = L.samples(slot, rng, ShardReader(L, stats, replay), epoch, role)
        batches = bucket_batches(shuffle_buffer(samples, L.cfg.shuffle_buffer, rng),
                                 L.batch_size, L.cfg.bucket_batches, rng)
        for i in range(slot.num_batches):
            replay.active = i < skip
            meta = next(batches, [])
            if i < skip:
                continue  # replay: metadata only, no decoding
            meta = meta + [None] * (L.batch_size - len(meta))  # a short slot fills invalid rows
            if i == slot.num_batches - 1 and not L.cfg.resampled:  # count what the epoch
                stats["dropped_by_balancing"] += sum(len(b) for b in batches)  # leaves unread
            stats["filled_invalid"] += sum(m is None for m in meta)
            wavs = [decode_crop(m, L.cfg, L.seed, epoch, stats) if m else None for m in meta]
            batch = collate(wavs, [m.key if m else "" for m in meta], epoch)
            stats["padded_samples"] += batch["audio"].numel()
            stats["audio_samples"] += int(batch["lengths"][batch["valid"]].sum())
            batch["stats"] = dict(stats)
            stats.clear()  # the sample generator holds this very Counter: never rebind it
            yield batch


def _worker_init(worker_id: int) -> None:
    # The trainer decides when to stop; the launcher signals the whole process tree, and
    # the trainer still needs batches until it has saved.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    torch.set_num_threads(1)


def _kill_workers_at_exit() -> None:
    """Workers ignore SIGTERM, which is how multiprocessing's own exit handler stops
    daemonic children before joining them: an exit with live workers (an exception, a
    failed save) would wait forever. Registered after multiprocessing's handler, so it runs
    first (atexit is last-in, first-out)."""
    children = multiprocessing.active_children()
    if children:  # torch's SIGCHLD handler would report these kills as worker failures
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()


atexit.register(_kill_workers_at_exit)


class TrainLoader:
    """Per-rank training stream; see the module docstring. State: (epoch, batches consumed)."""

    def __init__(self, cfg: DataConfig, batch_size: int, rank: int, world_size: int,
                 seed: int) -> None:
        self.cfg, self.batch_size, self.rank, self.world = cfg, batch_size, rank, world_size
        self.seed, self.W = seed, max(cfg.num_workers, 1)
        self.sources = [expand_spec(s.shards, cfg.allow_pipe, f"data.sources[{s.name}].shards")
                        for s in cfg.sources]
        self.weights = [s.weight for s in cfg.sources]
        self._source_names = {s.url: src.name for src, shards in zip(cfg.sources, self.sources)
                              for s in shards}
        self._validate()
        self.epoch, self.consumed = 0, 0
        self.totals: Counter = Counter()

    def _validate(self) -> None:
        if not self.sources:
            raise ConfigError("data.sources is empty: add at least one {name, shards} entry")
        if self.cfg.resampled:
            return
        if len(set(self.weights)) > 1:
            raise ConfigError(f"data.sources: unequal weights {self.weights} need "
                              "data.resampled: true (finite epochs read every shard once)")
        shards = [s for src in self.sources for s in src]
        unknown = [s.url for s in shards if s.num_samples is None]
        if unknown:
            raise ConfigError(f"data.sources: no sample count for {unknown[0]} (no index.json); "
                              "pack with tools/make_shards.py or set data.resampled: true")
        slots = self.world * self.W
        if len(shards) < slots:
            raise ConfigError(f"data.sources: {len(shards)} shards for {self.world} ranks x "
                              f"{self.W} workers = {slots} readers; every reader needs a shard: "
                              "use more (smaller) shards, fewer data.num_workers, or "
                              "data.resampled: true")
        if self.slot(0, 0).num_batches == 0:
            raise ConfigError(f"data.sources: too few samples for batch size {self.batch_size} "
                              f"on {slots} readers")

    def slot(self, epoch: int, role: int) -> Slot:
        if self.cfg.resampled:
            total = sum(s.num_samples or 0 for src in self.sources for s in src)
            per = math.ceil(total / (self.world * self.W * self.batch_size)) if total else 0
            return Slot([], per or RESAMPLED_EPOCH_DEFAULT)
        shards = [s for src in self.sources for s in src]
        return assign_slots(shards, self.world * self.W, self.batch_size, self.seed,
                            epoch)[self.rank * self.W + role]

    def samples(self, slot: Slot, rng: random.Random, reader: "ShardReader", epoch: int,
                role: int) -> Iterator[Sample]:
        if not self.cfg.resampled:
            for shard in slot.shards:
                yield from reader.read(shard)
            return
        src_rng = random.Random(hash_seed(self.seed, epoch, self.rank, role, "sources"))
        streams = [self._resampled(src, src_rng, reader) for src in self.sources]
        while True:
            i = rng.choices(range(len(streams)), weights=self.weights)[0]
            yield next(streams[i])

    @staticmethod
    def _resampled(shards: list[Shard], rng: random.Random,
                   reader: "ShardReader") -> Iterator[Sample]:
        while True:
            yield from reader.read(rng.choice(shards))

    def source_of(self, shard: Shard) -> str:
        return self._source_names.get(shard.url, "?")

    @property
    def batches_per_epoch(self) -> int:
        return self.W * self.slot(self.epoch, 0).num_batches

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.consumed = int(state["epoch"]), int(state["batches_consumed"])

    def stats(self) -> dict:
        """Counters (skips by reason/shard/key, fills) and the padding fraction so far."""
        out = dict(self.totals)
        if self.totals["padded_samples"]:
            out["padding_fraction"] = 1 - self.totals["audio_samples"] / self.totals["padded_samples"]
        return out

    def __iter__(self) -> Iterator[dict]:
        """Batches forever, epoch after epoch, from one DataLoader: forking workers per
        epoch would copy the trainer's address space each time (seconds per fork) and
        drain the prefetch queue at every epoch boundary."""
        stream = _SlotStream(self, self.epoch, self.consumed)
        workers = self.cfg.num_workers
        # Own generator: DataLoader draws a base seed when iterated, and drawing it from
        # the global RNG would shift the trainer's dropout stream (breaking exact resume).
        # Nothing in the workers draws from torch's or Python's global RNGs.
        dl = DataLoader(stream, batch_size=None, num_workers=workers,
                        generator=torch.Generator().manual_seed(hash_seed(self.seed, self.epoch)),
                        worker_init_fn=_worker_init if workers else None,
                        prefetch_factor=2 if workers else None,
                        multiprocessing_context="fork" if workers else None,
                        # page-locked batches: the step's host-to-device copies are async
                        pin_memory=torch.cuda.is_available())
        per_epoch = self.batches_per_epoch
        for batch in dl:
            if batch["epoch"] != self.epoch:
                raise RuntimeError(f"loader out of step: batch of epoch {batch['epoch']} while "
                                   f"the state is epoch {self.epoch}, batch {self.consumed}")
            self.consumed += 1
            if self.consumed == per_epoch:
                self.epoch, self.consumed = self.epoch + 1, 0
                per_epoch = self.batches_per_epoch
            self.totals.update(batch.pop("stats"))
            yield batch


class DataSourceError(RuntimeError):
    """Too many consecutive shards of one source yielded nothing: the run must stop."""


class ShardReader:
    """Reads the shards of one worker's stream: from their sample index while replaying a
    resume (tar bytes for shards without one, warned once), and stops the run with
    DataSourceError after data.max_failed_shards_in_a_row consecutive shards of one source
    that yield no sample (a spin otherwise, in resampled mode, until the NCCL timeout)."""

    def __init__(self, loader: TrainLoader, stats: Counter, replay: Replay) -> None:
        self.loader, self.stats, self.replay = loader, stats, replay
        self.failed: Counter = Counter()  # source name -> consecutive empty shards
        self.warned = False

    def read(self, shard: Shard) -> Iterator[Sample]:
        cfg, source = self.loader.cfg, self.loader.source_of(shard)
        if self.replay.active and shard.sample_index:
            entries = load_sample_index(shard.sample_index, self.stats)
            stream = replay_shard(shard.url, entries, cfg, self.stats, self.replay)
        else:
            if self.replay.active and not self.warned:
                self.warned = True
                log.warning("shard %s has no sample index: resuming replays its tar bytes; "
                            "to resume without reading them, run %s", redact(shard.url),
                            REINDEX_FIX)
            stream = read_samples(shard.url, cfg, self.stats, shard.num_samples)
        count = 0
        while True:
            try:
                sample = next(stream)
            except StopIteration as end:
                error = end.value
                break
            count += 1
            yield sample
        self.failed[source] = 0 if count else self.failed[source] + 1
        if self.failed[source] >= cfg.max_failed_shards_in_a_row:
            raise DataSourceError(
                f"data source {source!r}: {self.failed[source]} shards in a row yielded no "
                f"sample (data.max_failed_shards_in_a_row={cfg.max_failed_shards_in_a_row}); "
                f"the last, {redact(shard.url)}: {error or 'no usable sample'}. Check that the "
                "shards are reachable and readable (mount, permissions, credentials, the "
                "pipe: command)")

"""The training data stream: shards -> (rank, worker) slots -> samples -> length-bucketed
batches -> decode + crop -> collate. Deterministic by construction and exactly resumable.

Batch dict (what the trainer receives):
    audio   (B, S) float32, zero-padded, 16 kHz mono
    lengths (B,) int64 valid samples
    valid   (B,) bool; False = the sample failed (row is silence, the loss must ignore it)
    keys    list[str] (B)
    epoch   int
    labels  (B, T_enc) int64, -1 on padding; only with data.label_member (one label per
            20 ms encoder frame, T_enc = ceil((1 + S // 160) / 2))

Determinism: every random choice is drawn from generators the pipeline seeds itself from
(seed, epoch[, rank, worker]): the shard-to-slot assignment, the shuffle buffer, the batch
order and the source choice; crop offsets are hashed from (seed, epoch, key), so they do
not depend on order at all.

Equal batch counts: each (rank, worker) slot yields exactly K batches per epoch, K computed
from the index without communication, so every rank takes the same number of steps and no
collective can hang. Samples beyond K x batch in a slot are dropped and counted
(`dropped_by_balancing`, read as metadata at the end of the slot's epoch); a slot that runs
short (filtered or corrupt samples) fills with invalid rows (`filled_invalid`).

Resume: the state is the number of batches handed to the trainer in the current epoch. The
DataLoader always restarts its round-robin at worker 0, so on resume worker k plays role
(k + n) % W and first skips the batches of that role already consumed, replaying the
metadata stream (tar headers + json, no audio decoding). Replay reads the slot's tar bytes
up to the resume point: at most one epoch of that slot's data.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from wavlm_ds.config import DataConfig
from wavlm_ds.data.audio import AudioError, check_waveform, decode_audio, to_mono_16k
from wavlm_ds.data.spec import Shard

log = logging.getLogger(__name__)
SR = 16000
CROP_ALIGN = 320  # crop offsets on 20 ms boundaries, so frame-rate labels crop exactly
LABEL_TOLERANCE = 2  # label-count disagreement (frames) still accepted, padded with -1
AUDIO_EXTS = ("flac", "wav")


def hash_seed(*keys: object) -> int:
    """A 64-bit seed hashed from keys (e.g. seed, epoch, rank, worker): no correlated
    neighbours, the same in every process. The one seed mixer of the project."""
    return int.from_bytes(hashlib.blake2b(repr(keys).encode(), digest_size=8).digest(), "little")


@dataclass
class Sample:
    key: str
    shard: str
    duration_s: float
    audio: bytes
    ext: str
    labels: bytes | None = None  # .npy bytes of one label per 20 ms frame, if configured


@dataclass
class Slot:
    """What one (rank, worker) reads in one epoch."""
    shards: list[Shard]
    num_batches: int


def read_tar(url: str, max_member_bytes: int, stats: Counter,
             expected: int | None = None) -> Iterator[dict]:
    """Group a tar's members by key; skip oversized members before reading them.

    A damaged tar ends the shard: the sample being read is still yielded with the members
    read completely (to_sample rejects it if one is missing). tarfile ends silently when a
    tar is cut inside a header, so with `expected` (the index's sample count) the samples
    that never appeared are counted as `lost_samples:<url>` too.
    """
    current: dict = {}
    seen = 0
    try:
        with _open(url) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                if current and current["__key__"] != key:
                    yield current
                    current = {}
                if not current:
                    seen += 1
                current["__key__"] = key
                if member.size > max_member_bytes:
                    stats[f"member_too_large:{url}:{key}"] += 1
                    current.setdefault("__refused__", True)
                    continue
                current[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        stats[f"truncated_shard:{url}"] += 1
        log.warning("shard %s is damaged (%s): skipping its remaining samples", url, err)
    if current:
        yield current
    if expected is not None and seen < expected:
        stats[f"lost_samples:{url}"] += expected - seen
        log.warning("shard %s: %d of the %d samples its index lists are missing (truncated?)",
                    url, expected - seen, expected)


def _open(url: str):
    if url.startswith("pipe:"):
        import subprocess
        proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE)
        return proc.stdout
    return open(url, "rb")


def to_sample(raw: dict, url: str, cfg: DataConfig, stats: Counter) -> Sample | None:
    """Metadata checks only (no decoding): missing members, bad json, duration filter."""
    key = raw["__key__"]
    if raw.get("__refused__"):
        return None
    ext = next((e for e in AUDIO_EXTS if e in raw), None)
    if ext is None or "json" not in raw:
        stats["missing_member"] += 1
        log.warning("%s: sample %s lacks %s", url, key, "audio" if ext is None else ".json")
        return None
    try:
        duration = float(json.loads(raw["json"])["duration_s"])
    except (ValueError, KeyError, TypeError):
        stats["bad_json"] += 1
        return None
    if duration < cfg.min_duration_s:
        stats["too_short"] += 1
        return None
    labels = None
    if cfg.label_member:
        labels = raw.get(cfg.label_member)
        if labels is None:
            stats[f"missing_labels:{url}:{key}"] += 1
            return None
    return Sample(key, url, duration, raw[ext], ext, labels)


def read_samples(url: str, cfg: DataConfig, stats: Counter,
                 expected: int | None = None) -> Iterator[Sample]:
    """Samples of one shard, with members of its sidecar shard (same file name under
    data.label_sidecar_dir) joined by key; metadata only, nothing decoded. `expected`: the
    index's sample count, to count samples lost to truncation."""
    sidecar: dict[str, dict] = {}
    if cfg.label_sidecar_dir:
        path = f"{cfg.label_sidecar_dir.rstrip('/')}/{url.rsplit('/', 1)[-1]}"
        sidecar = {raw["__key__"]: raw for raw in read_tar(path, cfg.max_member_bytes, stats)}
    for raw in read_tar(url, cfg.max_member_bytes, stats, expected):
        extra = sidecar.get(raw["__key__"], {})
        sample = to_sample({**extra, **raw}, url, cfg, stats)
        if sample is not None:
            yield sample


def decode_crop(sample: Sample, cfg: DataConfig, seed: int, epoch: int, stats: Counter,
                random_crop: bool = True) -> np.ndarray | tuple | None:
    """Decode, fix what is defined (resample, downmix), reject the rest, crop."""
    try:
        samples, rate = decode_audio(sample.audio, f"{sample.shard}:{sample.key}")
        wav = to_mono_16k(samples, rate)
        check_waveform(wav, f"{sample.shard}:{sample.key}")
    except AudioError as err:
        stats[f"bad_audio:{sample.shard}:{sample.key}"] += 1
        log.warning("skipped: %s", err)
        return None
    max_len, start = int(cfg.max_duration_s * SR), 0
    if len(wav) > max_len:
        choices = (len(wav) - max_len) // CROP_ALIGN + 1
        start = (hash_seed(seed, epoch, sample.key) % choices) * CROP_ALIGN if random_crop else 0
        wav = wav[start:start + max_len]
    if sample.labels is not None:
        labels = crop_labels(sample, len(wav), start, stats)
        return None if labels is None else (wav, labels)
    return wav


def label_frames(num_samples: int) -> int:
    """Labels of n samples: one per 20 ms encoder frame, ceil((1 + n // 160) / 2) (htk
    log-Mel frames, 10 ms hop with centre padding, stacked by 2)."""
    return -(-(1 + num_samples // 160) // 2)


def crop_labels(sample: Sample, num_samples: int, start: int, stats: Counter) -> np.ndarray | None:
    """The labels of the cropped audio: frames [start/320, ...), one per encoder frame.

    Label files hold label_frames(n) int labels for n samples; up to LABEL_TOLERANCE frames
    of disagreement are tolerated (padding with -1), more is an error for that sample: it
    is skipped, counted as `label_mismatch:<shard>:<key>` and logged with the numbers.
    """
    try:
        labels = np.load(io.BytesIO(sample.labels), allow_pickle=False).astype(np.int64).ravel()
    except (ValueError, OSError) as err:
        stats[f"bad_labels:{sample.shard}:{sample.key}"] += 1
        log.warning("%s:%s: unreadable labels (%s)", sample.shard, sample.key, err)
        return None
    full = round(sample.duration_s * SR)
    expected = label_frames(full)
    if abs(len(labels) - expected) > LABEL_TOLERANCE:
        stats[f"label_mismatch:{sample.shard}:{sample.key}"] += 1
        log.warning("sample %s of shard %s: %d labels, but its %.3f s (%d samples) have %d "
                    "encoder frames of 20 ms (tolerance %d): skipped; labels must be one per "
                    "20 ms frame, e.g. from tools/kmeans_labels.py", sample.key, sample.shard,
                    len(labels), sample.duration_s, full, expected, LABEL_TOLERANCE)
        return None
    first, count = start // CROP_ALIGN, label_frames(num_samples)
    out = np.full(count, -1, dtype=np.int64)
    piece = labels[first:first + count]
    out[: len(piece)] = piece
    return out


def collate(items: list, keys: list[str], epoch: int) -> dict:
    """Pad into the batch dict; items are waveforms, (waveform, labels) pairs or None."""
    with_labels = any(isinstance(x, tuple) for x in items)
    wavs = [x[0] if isinstance(x, tuple) else x for x in items]
    lengths = [len(w) if w is not None else SR for w in wavs]
    audio = torch.zeros(len(wavs), max(lengths))
    for i, w in enumerate(wavs):  # host-side copy into the padded batch (worker process)
        if w is not None:
            audio[i, : len(w)] = torch.from_numpy(w)
    batch = {"audio": audio, "lengths": torch.tensor(lengths, dtype=torch.long),
             "valid": torch.tensor([w is not None for w in wavs]), "keys": keys, "epoch": epoch}
    if with_labels:  # (B, T_enc) int64, -1 on padding, T_enc of the padded batch
        frames = label_frames(audio.shape[1])
        labels = torch.full((len(items), frames), -1, dtype=torch.long)
        for i, x in enumerate(items):
            if isinstance(x, tuple):
                labels[i, : len(x[1])] = torch.from_numpy(x[1][:frames])
        batch["labels"] = labels
    return batch

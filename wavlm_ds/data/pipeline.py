"""The training data stream: shards -> (rank, worker) slots -> samples -> length-bucketed
batches -> decode + crop -> collate. Deterministic by construction and exactly resumable.

Batch dict (what the trainer receives):
    audio   (B, S) float32, zero-padded, 16 kHz mono
    lengths (B,) int64 valid samples
    valid   (B,) bool; False = the sample failed (row is silence, the loss must ignore it)
    keys    list[str] (B)
    epoch   int

Determinism: every random choice is drawn from generators the pipeline seeds itself from
(seed, epoch[, rank, worker]): the shard-to-slot assignment, the shuffle buffer, the batch
order and the source choice; crop offsets are hashed from (seed, epoch, key), so they do
not depend on order at all.

Equal batch counts: each (rank, worker) slot yields exactly K batches per epoch, K computed
from the index without communication, so every rank takes the same number of steps and no
collective can hang. Samples beyond K x batch in a slot are dropped and counted; a slot
that runs short (filtered or corrupt samples) fills with invalid rows.

Resume: the state is the number of batches handed to the trainer in the current epoch. The
DataLoader always restarts its round-robin at worker 0, so on resume worker k plays role
(k + n) % W and first skips the batches of that role already consumed, replaying the
metadata stream (tar headers + json, no audio decoding). Replay reads the slot's tar bytes
up to the resume point: at most one epoch of that slot's data.
"""
from __future__ import annotations

import hashlib
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
AUDIO_EXTS = ("flac", "wav")


def _seed(*keys: object) -> int:
    return int.from_bytes(hashlib.blake2b(repr(keys).encode(), digest_size=8).digest(), "little")


@dataclass
class Sample:
    key: str
    shard: str
    duration_s: float
    audio: bytes
    ext: str


@dataclass
class Slot:
    """What one (rank, worker) reads in one epoch."""
    shards: list[Shard]
    num_batches: int


def read_tar(url: str, max_member_bytes: int, stats: Counter) -> Iterator[dict]:
    """Group a tar's members by key; skip oversized members before reading them."""
    current: dict = {}
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
                current["__key__"] = key
                if member.size > max_member_bytes:
                    stats[f"member_too_large:{url}:{key}"] += 1
                    current.setdefault("__refused__", True)
                    continue
                current[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        stats[f"truncated_shard:{url}"] += 1
        log.warning("shard %s is damaged (%s): skipping its remaining samples", url, err)
        return  # the partial current sample is dropped
    if current:
        yield current


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
    return Sample(key, url, duration, raw[ext], ext)


def decode_crop(sample: Sample, cfg: DataConfig, seed: int, epoch: int, stats: Counter,
                random_crop: bool = True) -> np.ndarray | None:
    """Decode, fix what is defined (resample, downmix), reject the rest, crop."""
    try:
        samples, rate = decode_audio(sample.audio, f"{sample.shard}:{sample.key}")
        wav = to_mono_16k(samples, rate)
        check_waveform(wav, f"{sample.shard}:{sample.key}")
    except AudioError as err:
        stats[f"bad_audio:{sample.shard}:{sample.key}"] += 1
        log.warning("skipped: %s", err)
        return None
    max_len = int(cfg.max_duration_s * SR)
    if len(wav) > max_len:
        choices = (len(wav) - max_len) // CROP_ALIGN + 1
        start = (_seed(seed, epoch, sample.key) % choices) * CROP_ALIGN if random_crop else 0
        wav = wav[start:start + max_len]
    return wav


def collate(wavs: list[np.ndarray | None], keys: list[str], epoch: int) -> dict:
    lengths = [len(w) if w is not None else SR for w in wavs]
    audio = torch.zeros(len(wavs), max(lengths))
    for i, w in enumerate(wavs):  # host-side copy into the padded batch (worker process)
        if w is not None:
            audio[i, : len(w)] = torch.from_numpy(w)
    return {"audio": audio, "lengths": torch.tensor(lengths, dtype=torch.long),
            "valid": torch.tensor([w is not None for w in wavs]), "keys": keys, "epoch": epoch}

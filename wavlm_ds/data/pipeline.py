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
metadata stream. Shards with a sample index (data/sample_index.py, written by make_shards)
are replayed from it: no tar bytes; the samples still in the shuffle buffer and bucket pool
when replay ends are fetched one by one by byte range, and the shard being read continues
from its first unseen sample. Bytes read to resume: the slot's sample-index files, plus at
most (shuffle_buffer + bucket_batches x batch) samples fetched by range, which is at most
one shard's bytes whenever a shard holds that many samples. Shards without a sample index
replay their tar bytes up to the resume point (up to one epoch of the slot), with a warning
naming the fix (`tools/make_shards.py --reindex DIR/index.json`).
"""
from __future__ import annotations

import io
import logging
import tarfile
from collections import Counter
from dataclasses import dataclass, replace
from typing import Generator, Iterable, Iterator

import numpy as np
import torch

from wavlm_ds.config import DataConfig
from wavlm_ds.data.audio import AudioError, check_waveform, decode_audio, to_mono_16k
from wavlm_ds.data.io import open_shard, read_range, redact
from wavlm_ds.data.sample_index import SampleEntry, parse_duration, split_name
from wavlm_ds.data.spec import Shard
from wavlm_ds.seeding import hash_seed

log = logging.getLogger(__name__)
SR = 16000
CROP_ALIGN = 320  # crop offsets on 20 ms boundaries, so frame-rate labels crop exactly
LABEL_TOLERANCE = 2  # label-count disagreement (frames) still accepted, padded with -1
AUDIO_EXTS = ("flac", "wav")


@dataclass
class Sample:
    key: str
    shard: str
    duration_s: float
    audio: bytes | None  # None: not read yet; fetched from `span` of the shard when decoded
    ext: str
    labels: bytes | None = None  # .npy bytes of one label per 20 ms frame, if configured
    span: tuple[int, int] | None = None  # the sample's bytes in its tar (from a sample index)


@dataclass
class Slot:
    """What one (rank, worker) reads in one epoch."""
    shards: list[Shard]
    num_batches: int


class Replay:
    """Set while a resumed reader walks the batches it already handed out: shards with a
    sample index are then replayed from it (no tar bytes), see replay_shard."""

    def __init__(self, active: bool) -> None:
        self.active = active


def skip(stats: Counter, reason: str, url: str, key: str, detail: str = "") -> None:
    """Count a skipped sample per reason, shard and key, and log it once."""
    name = redact(url)
    stats[f"{reason}:{name}:{key}"] += 1
    (log.info if reason == "too_short" else log.warning)(
        "skipped %s of shard %s: %s%s", key, name, reason, f" ({detail})" if detail else "")


def group_members(tar: tarfile.TarFile, url: str, max_member_bytes: int, stats: Counter,
                  errors: list) -> Iterator[dict]:
    """Members grouped by key (consecutive members sharing it); oversized members are
    skipped before they are read. A damaged tar ends the shard, its error appended to
    `errors`: the sample being read is still yielded with the members read completely."""
    current: dict = {}
    try:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = split_name(member.name)
            if current and current["__key__"] != key:
                yield current
                current = {}
            current["__key__"] = key
            if member.size > max_member_bytes:
                stats[f"member_too_large:{redact(url)}:{key}"] += 1
                current.setdefault("__refused__", True)
                continue
            current[ext] = tar.extractfile(member).read()
    except Exception as err:  # tarfile, OSError, or a back end's own (aiohttp, botocore)
        errors.append(err)
    if current:
        yield current


def read_tar(url: str, max_member_bytes: int, stats: Counter, expected: int | None = None,
             start: int = 0) -> Generator[dict, None, str | None]:
    """The raw samples of one shard from byte `start` (a sample boundary); returns the
    error that ended it early, or None.

    A damaged, unreadable or cut shard is counted as `truncated_shard:<url>`; tarfile ends
    silently when a tar is cut inside a header, so with `expected` (the index's count of
    samples from `start` on) the samples that never appeared count as `lost_samples:<url>`.
    """
    seen, errors, name = 0, [], redact(url)
    try:
        with open_shard(url, stats, start) as stream, \
                tarfile.open(fileobj=stream, mode="r|*") as tar:
            for raw in group_members(tar, url, max_member_bytes, stats, errors):
                seen += 1
                yield raw
    except Exception as err:  # opening failed (after retries), or a pipe: exit status
        errors.append(err)
    error = f"{type(errors[-1]).__name__}: {redact(str(errors[-1]))}" if errors else None
    if error:
        stats[f"truncated_shard:{url}"] += 1
        log.warning("shard %s is damaged or unreadable (%s): skipping its remaining samples",
                    name, error)
    if expected is not None and seen < expected:
        stats[f"lost_samples:{url}"] += expected - seen
        log.warning("shard %s: %d of the %d samples its index lists are missing (truncated?)",
                    name, expected - seen, expected)
    return error


def admit(key: str, members: Iterable[str], duration: float | None, url: str,
          cfg: DataConfig, stats: Counter) -> str | None:
    """The metadata checks (no decoding) on a sample's member names and duration: its audio
    extension if it passes, else None with the skip counted and logged."""
    members = set(members)
    ext = next((e for e in AUDIO_EXTS if e in members), None)
    if ext is None or "json" not in members:
        skip(stats, "missing_member", url, key, "no audio" if ext is None else "no .json")
    elif duration is None:
        skip(stats, "bad_json", url, key, "no readable duration_s")
    elif duration < cfg.min_duration_s:
        skip(stats, "too_short", url, key, f"{duration:.2f} s < {cfg.min_duration_s} s")
    elif cfg.label_member and cfg.label_member not in members:
        skip(stats, "missing_labels", url, key, f"no .{cfg.label_member}")
    else:
        return ext
    return None


def to_sample(raw: dict, url: str, cfg: DataConfig, stats: Counter) -> Sample | None:
    """A raw member group as a Sample, or None (skip counted) if it fails `admit`."""
    if raw.get("__refused__"):
        return None
    key, duration = raw["__key__"], parse_duration(raw.get("json"))
    ext = admit(key, raw, duration, url, cfg, stats)
    if ext is None:
        return None
    return Sample(key, url, duration, raw[ext], ext,
                  raw.get(cfg.label_member) if cfg.label_member else None)


def _sidecar(url: str, cfg: DataConfig, stats: Counter) -> dict[str, dict]:
    """Members of the shard's label sidecar (same file name under data.label_sidecar_dir)."""
    if not cfg.label_sidecar_dir:
        return {}
    path = f"{cfg.label_sidecar_dir.rstrip('/')}/{url.rsplit('/', 1)[-1]}"
    return {raw["__key__"]: raw for raw in read_tar(path, cfg.max_member_bytes, stats)}


def read_samples(url: str, cfg: DataConfig, stats: Counter, expected: int | None = None,
                 start: int = 0, with_rejected: bool = False,
                 ) -> Generator[Sample | None, None, str | None]:
    """Samples of one shard from byte `start`, with its sidecar's members joined by key;
    metadata only, nothing decoded; rejected samples as None if `with_rejected`. Returns
    the error that ended the shard early, or None."""
    sidecar = _sidecar(url, cfg, stats)
    reader = read_tar(url, cfg.max_member_bytes, stats, expected, start)
    while True:
        try:
            raw = next(reader)
        except StopIteration as end:
            return end.value
        sample = to_sample({**sidecar.get(raw["__key__"], {}), **raw}, url, cfg, stats)
        if sample is not None or with_rejected:
            yield sample


def replay_shard(url: str, entries: list[SampleEntry], cfg: DataConfig, stats: Counter,
                 replay: Replay) -> Generator[Sample, None, str | None]:
    """A shard's samples from its sample index while `replay` is active (audio left to be
    fetched by span), then from the tar itself, opened at the first sample not yet seen."""
    sidecar = _sidecar(url, cfg, stats)
    for i, entry in enumerate(entries):
        if not replay.active:
            return (yield from read_samples(url, cfg, stats, len(entries) - i, entry.start))
        labels = sidecar.get(entry.key, {}).get(cfg.label_member) if cfg.label_member else None
        members = list(entry.sizes) + ([cfg.label_member] if labels is not None else [])
        too_large = [e for e, size in entry.sizes.items() if size > cfg.max_member_bytes]
        for _ in too_large:  # counted per member, as group_members does
            stats[f"member_too_large:{redact(url)}:{entry.key}"] += 1
        if too_large:
            continue
        ext = admit(entry.key, members, entry.duration_s, url, cfg, stats)
        if ext is not None:
            yield Sample(entry.key, url, entry.duration_s, None, ext, labels,
                         (entry.start, entry.end))
    return None


def fetch(sample: Sample, cfg: DataConfig, stats: Counter) -> Sample:
    """The sample with its audio (and in-shard labels) read from its span of the tar."""
    data = read_range(sample.shard, *sample.span, stats)
    errors: list = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
        raw = next(group_members(tar, sample.shard, cfg.max_member_bytes, stats, errors), {})
    if sample.ext not in raw:
        raise OSError(f"no {sample.ext} member at bytes {sample.span} "
                      f"({errors[-1] if errors else 'shard changed since it was indexed?'})")
    labels = sample.labels if sample.labels is not None else raw.get(cfg.label_member)
    return replace(sample, audio=raw[sample.ext], labels=labels if cfg.label_member else None)


def decode_crop(sample: Sample, cfg: DataConfig, seed: int, epoch: int, stats: Counter,
                random_crop: bool = True) -> np.ndarray | tuple | None:
    """Fetch if not read yet, decode, fix what is defined (resample, downmix), reject the
    rest, crop."""
    try:
        if sample.audio is None:
            sample = fetch(sample, cfg, stats)
    except (OSError, tarfile.TarError) as err:
        skip(stats, "unreadable", sample.shard, sample.key, redact(str(err)))
        return None
    try:
        samples, rate = decode_audio(sample.audio, f"{sample.shard}:{sample.key}")
        wav = to_mono_16k(samples, rate)
        check_waveform(wav, f"{sample.shard}:{sample.key}")
    except AudioError as err:
        skip(stats, "bad_audio", sample.shard, sample.key, str(err))
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

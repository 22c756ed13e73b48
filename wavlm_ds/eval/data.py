"""Labelled shards for evaluation: tar members `<key>.<audio ext>` + `<key>.json`.

Any shard set written by tools/make_shards.py works: a split directory (with its
index.json, or just *.tar files), an index.json, a single .tar, a glob, or a comma list.
Tars go through the training pipeline's reader (wavlm_ds.data.pipeline.read_tar: no
pickle decoders) and audio through wavlm_ds.data.audio, so every format the trainer
reads works here too.
"""
from __future__ import annotations

import glob
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wavlm_ds.data.pipeline import read_tar
from wavlm_ds.eval import EvalError

AUDIO_EXTS = ("flac", "wav", "mp3", "ogg", "opus")
SR = 16000


@dataclass
class Utterance:
    key: str
    audio: np.ndarray  # (S,) float32, mono 16 kHz
    meta: dict  # the sample's .json ("transcript", "phonemes", "speaker", ...)
    shard: str


@dataclass
class Split:
    name: str
    source: str
    utterances: list[Utterance]
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def hours(self) -> float:
        return sum(u.audio.size for u in self.utterances) / SR / 3600


def resolve_shards(spec: str) -> list[Path]:
    """Shard paths of a split dir, index.json, .tar, glob, or comma-separated list of those."""
    paths: list[Path] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        path = Path(part)
        if path.is_dir():
            index = path / "index.json"
            paths += _from_index(index) if index.is_file() else sorted(path.glob("*.tar"))
        elif path.suffix == ".json" and path.is_file():
            paths += _from_index(path)
        elif path.is_file():
            paths.append(path)
        else:
            paths += [Path(p) for p in sorted(glob.glob(part))]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise EvalError(f"{spec}: shard {missing[0]} does not exist ({len(missing)} missing)")
    return paths


def _from_index(index: Path) -> list[Path]:
    """Shard paths listed by an index.json (names relative to its directory)."""
    from wavlm_ds.data.index import ShardIndexError, read_index
    try:
        return read_index(index).shard_paths()
    except ShardIndexError as err:
        raise EvalError(str(err)) from None


def _decode(blob: bytes, source: str) -> np.ndarray | None:
    """Mono 16 kHz float32, or None for a sample that cannot be used (counted by the caller)."""
    from wavlm_ds.data.audio import AudioError, check_waveform, decode_audio, to_mono_16k
    try:
        audio = to_mono_16k(*decode_audio(blob, source))
        check_waveform(audio, source)
    except AudioError as err:
        print(f"[eval] skipped: {err}", file=sys.stderr)
        return None
    return np.ascontiguousarray(audio, dtype=np.float32)


def load_split(spec: str, name: str, max_utterances: int = 0, max_seconds: float = 30.0,
               max_member_bytes: int = 64 * 2**20) -> Split:
    """Decode every labelled utterance of a split (first `max_utterances` if > 0).

    Utterances longer than `max_seconds` are skipped and counted (probe memory is linear
    in length, and the BiLSTM is run on whole utterances).
    """
    shards = resolve_shards(spec)
    if not shards:
        raise EvalError(f"{name} split {spec!r}: no shards found")
    split = Split(name, spec, [], {"no_audio": 0, "no_json": 0, "bad_audio": 0, "too_long": 0,
                                   "too_short": 0})
    damaged: Counter = Counter()
    for shard in tqdm(shards, desc=f"read {name}", unit="shard", leave=False):
        # The training pipeline's tar reader: members grouped by key, oversized members
        # refused before reading, a damaged tar ends its shard (counted) instead of raising.
        for members in read_tar(str(shard), max_member_bytes, damaged):
            key = members["__key__"]
            ext = next((e for e in AUDIO_EXTS if e in members), None)
            if ext is None:
                split.skipped["no_audio"] += 1
                continue
            if "json" not in members:
                split.skipped["no_json"] += 1
                continue
            audio = _decode(members[ext], f"{shard}:{key}.{ext}")
            if audio is None:
                split.skipped["bad_audio"] += 1
                continue
            if audio.size > max_seconds * SR:
                split.skipped["too_long"] += 1
                continue
            if audio.size < 400:  # shorter than one 25 ms analysis window
                split.skipped["too_short"] += 1
                continue
            split.utterances.append(Utterance(key, audio, json.loads(members["json"]), str(shard)))
            if max_utterances and len(split.utterances) >= max_utterances:
                return split
    split.skipped["refused_or_damaged"] = sum(damaged.values())
    if not split.utterances:
        raise EvalError(f"{name} split {spec!r}: no usable utterances in {len(shards)} shard(s) "
                        f"(skipped: {split.skipped}); an evaluation needs a non-empty split")
    return split


def label_texts(split: Split, field_name: str) -> list[str]:
    """The `field_name` of every utterance's .json; names the first sample without one."""
    missing = [u for u in split.utterances
               if not isinstance(u.meta.get(field_name), (str, list)) or not u.meta[field_name]]
    if missing:
        u = missing[0]
        raise EvalError(
            f"{split.name} split {split.source!r}: {len(missing)} of {len(split.utterances)} "
            f"utterances have no {field_name!r} in their .json (first: key {u.key} in {u.shard}); "
            "the ASR probe needs labelled shards: make them with tools/make_shards.py from a "
            f"corpus whose per-sample metadata has {field_name!r}")
    return [" ".join(u.meta[field_name]) if isinstance(u.meta[field_name], list)
            else u.meta[field_name] for u in split.utterances]

"""Pack audio into webdataset tar shards of 16 kHz mono FLAC + JSON metadata, with an index.

The library behind tools/make_shards.py (its docstring has the input kinds and the
layouts). Input entries come from a directory, a TSV/JSONL manifest, lhotse manifests or a
lhotse recipe (wavlm_ds/data/lhotse_io.py); each file is decoded, downmixed and resampled to
16 kHz, split at quiet frames when longer than `max_duration_s` (supervised spans stay
whole) and written by `ShardWriter`; `write_index` adds index.json and, beside each shard,
its sample index (byte offsets, sizes, durations) for resume without reading tars.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import tarfile
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wavlm_ds.data.audio import AudioError, check_waveform, decode_audio, encode_flac, to_mono_16k
from wavlm_ds.data.index import ShardInfo, write_index
from wavlm_ds.data.lhotse_io import CorpusError, manifest_kind, prepare, read_manifests

SR = 16000
AUDIO_EXTS = {".wav", ".flac", ".ogg", ".mp3"}
META_KEYS = ("transcript", "phonemes", "speaker", "language")


def read_inputs(source: Path, supervisions: Path | None = None) -> list[dict]:
    """Entries {path, rel, meta...} from a directory tree, a TSV/JSONL manifest or lhotse
    manifests (see wavlm_ds.data.lhotse_io)."""
    if supervisions is not None or manifest_kind(source):
        return read_manifests([source] + ([supervisions] if supervisions else []))
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_EXTS)
        return [{"path": str(p), "rel": str(p.relative_to(source))} for p in files]
    if source.suffix == ".jsonl":
        rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    elif source.suffix == ".tsv":
        rows = list(csv.DictReader(source.read_text().splitlines(), delimiter="\t"))
    else:
        raise CorpusError(f"{source} is neither a directory nor a .tsv/.jsonl manifest")
    for i, row in enumerate(rows):
        if "path" not in row:
            raise CorpusError(f"{source} line {i + 1} has no 'path' field")
        path = Path(row["path"])
        row["path"] = str(path if path.is_absolute() else source.parent / path)
        row["rel"] = row["path"]
    return rows


def safe_key(rel: str, segment: int) -> str:
    """A tar-safe key: letters, digits, '_' and '-' only (no '/', '.', '..'), plus a hash."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", rel)[-60:].strip("_") or "x"
    digest = hashlib.sha1(rel.encode()).hexdigest()[:10]
    return f"{stem}_{digest}_{segment:03d}"


def split_points(wav: np.ndarray, max_len: int, search: int = 5 * SR, hop: int = 320) -> list[int]:
    """Cut positions so that no piece exceeds max_len, each at the quietest frame available."""
    cuts, start = [], 0
    while len(wav) - start > max_len:
        lo = start + max(max_len - search, hop)
        window = wav[lo: start + max_len]
        frames = window[: len(window) // hop * hop].reshape(-1, hop)
        quietest = int(np.argmin((frames ** 2).mean(axis=1)))
        cut = lo + quietest * hop + hop // 2
        cuts.append(cut)
        start = cut
    return cuts


def process(entry: dict, max_len: int) -> tuple[list[tuple[str, bytes, dict]], str | None]:
    """One input file -> [(key, flac bytes, metadata)] or an error reason."""
    if entry.get("error"):
        return [], entry["error"]
    try:
        data = Path(entry["path"]).read_bytes()
        samples, rate = decode_audio(data, entry["path"], entry.get("span"))
        wav = to_mono_16k(samples, rate)
        check_waveform(wav, entry["path"])
    except (AudioError, OSError) as err:
        return [], str(err)
    # a supervised span stays whole (its transcript covers all of it)
    bounds = [0, len(wav)] if entry.get("span") else [0, *split_points(wav, max_len), len(wav)]
    offset_s = entry["span"][0] if entry.get("span") else 0.0
    out = []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        key = safe_key(entry["rel"], i)
        meta = {"key": key, "duration_s": (b - a) / SR, "sample_rate": SR, "num_samples": b - a,
                "orig_sample_rate": rate, "orig_channels": int(samples.shape[1]),
                "source": entry["rel"], "segment": [offset_s + a / SR, offset_s + b / SR]}
        meta.update({k: entry[k] for k in META_KEYS if entry.get(k)})
        meta.update(entry.get("extra", {}))
        out.append((key, encode_flac(wav[a:b]), meta))
    return out, None


class ShardWriter:
    """Rolls over to a new tar when a count or byte limit would be exceeded."""

    def __init__(self, out: Path, prefix: str, max_samples: int, max_bytes: int) -> None:
        self.out, self.prefix, self.max_samples, self.max_bytes = out, prefix, max_samples, max_bytes
        self.infos: list[ShardInfo] = []
        self.tar = None

    def add(self, key: str, flac: bytes, meta: dict) -> None:
        size = len(flac) + 2048
        if self.tar is None or self.count >= self.max_samples or \
                (self.count and self.bytes + size > self.max_bytes):
            self._roll()
        payload = json.dumps(meta, ensure_ascii=False).encode()
        for name, data in ((f"{key}.flac", flac), (f"{key}.json", payload)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644  # deterministic shards
            self.tar.addfile(info, io.BytesIO(data))
        self.count, self.bytes, self.seconds = self.count + 1, self.bytes + size, \
            self.seconds + meta["duration_s"]

    def _roll(self) -> None:
        self.close()
        self.path = self.out / f"{self.prefix}-{len(self.infos):06d}.tar"
        self.tar = tarfile.open(self.path, "w", format=tarfile.USTAR_FORMAT)
        self.count, self.bytes, self.seconds = 0, 0, 0.0

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.infos.append(ShardInfo.from_file(self.path, self.count, self.seconds / 3600))
            self.tar = None


def make_shards(entries: list[dict], out: Path, prefix: str = "train", max_duration_s: float = 30.0,
                max_samples: int = 1000, max_bytes: int = 10**9, workers: int = 1) -> dict:
    """Pack `entries` into shards under `out`; returns the report (also written to JSON)."""
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out, prefix, max_samples, max_bytes)
    skipped, samples = [], 0
    args = [(e, int(max_duration_s * SR)) for e in entries]
    pool = Pool(workers) if workers > 1 else None
    try:  # imap and map both keep the input order, so shards are deterministic
        results = pool.imap(_process_star, args, chunksize=4) if pool else map(_process_star, args)
        for entry, (pieces, error) in zip(entries, tqdm(results, total=len(entries),
                                                       desc="make_shards", unit="file")):
            if error:
                skipped.append({"path": entry["rel"], "reason": error})
            for piece in pieces:
                writer.add(*piece)
                samples += 1
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    writer.close()
    index = write_index(out, writer.infos)
    report = {"inputs": len(entries), "samples": samples, "skipped": skipped,
              "shards": len(writer.infos), "hours": sum(i.hours for i in writer.infos),
              "index": str(index)}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def _process_star(args: tuple) -> tuple:
    return process(*args)


def plan_jobs(source: Path, out: Path, prefix: str = "train", recipe: str | None = None,
              supervisions: Path | None = None, language: str = "en"
              ) -> list[tuple[Path, str, list[dict]]]:
    """[(output dir, shard prefix, entries)]: one per recipe split, else one."""
    if recipe in (None, "none"):
        if recipe == "none" and not source.is_dir():
            raise CorpusError(f"{source}: --recipe none packs a directory; this is not one")
        return [(out, prefix, read_inputs(source, supervisions))]
    splits = prepare(recipe, source, out / "manifests", language)
    return [(out / split, split, entries) for split, entries in splits.items()]


def pack(source: Path, out: Path, prefix: str = "train", recipe: str | None = None,
         supervisions: Path | None = None, language: str = "en", max_duration_s: float = 30.0,
         max_samples: int = 1000, max_bytes: int = 10**9, workers: int = 1
         ) -> list[tuple[Path, dict]]:
    """Pack a directory, manifest(s) or a corpus (through its lhotse recipe) into shard sets;
    [(output dir, report)], one per recipe split. Raises CorpusError on unusable input."""
    return [(job_out, make_shards(entries, job_out, job_prefix, max_duration_s, max_samples,
                                  max_bytes, workers))
            for job_out, job_prefix, entries in plan_jobs(source, out, prefix, recipe,
                                                          supervisions, language)]

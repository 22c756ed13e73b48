"""Per-shard sample index: where each sample's members lie in its tar, and its duration.

`train-000000.idx.json` beside `train-000000.tar` (written by index.write_index, so by
tools/make_shards.py):

    {"version": 1, "samples": [[key, start, end, {ext: bytes}, duration_s or null], ...]}

`start` is the byte offset of the sample's first tar header, `end` the end of its last
member's data blocks: bytes [start, end) are a tar of that one sample, and a tar stream
opened at `start` continues at that sample. Members are grouped by key exactly as the
reader groups them (consecutive members with the same key). A resumed reader replays its
position over these records instead of the tar bytes (see pipeline.replay_shard).
"""
from __future__ import annotations

import json
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from wavlm_ds.data.io import read_bytes

BLOCK = tarfile.BLOCKSIZE


@dataclass(frozen=True)
class SampleEntry:
    key: str
    start: int
    end: int
    sizes: dict[str, int]  # member extension -> bytes
    duration_s: float | None  # None: the .json member is missing or unreadable


def sample_index_name(shard_name: str) -> str:
    return (shard_name[:-4] if shard_name.endswith(".tar") else shard_name) + ".idx.json"


def parse_duration(meta: bytes | None) -> float | None:
    """duration_s of a sample's .json member; None if absent or unreadable."""
    try:
        return float(json.loads(meta)["duration_s"])
    except (ValueError, KeyError, TypeError):
        return None


def split_name(name: str) -> tuple[str, str]:
    """(key, extension) of a tar member name, as the reader groups members."""
    key, _, ext = name.rsplit("/", 1)[-1].partition(".")
    return key, ext


def scan_tar(path: Path) -> list[SampleEntry]:
    """The sample records of a local tar: headers, plus each .json member's duration."""
    entries: list[SampleEntry] = []
    group: dict | None = None
    with tarfile.open(path, "r:") as tar:  # seekable mode: data blocks are skipped
        for member in tar:
            if not member.isfile():
                continue
            key, ext = split_name(member.name)
            if group is None or group["key"] != key:
                if group is not None:
                    entries.append(_entry(group))
                group = {"key": key, "start": member.offset, "sizes": {}, "json": None}
            group["sizes"][ext] = member.size
            group["end"] = member.offset_data + -(-member.size // BLOCK) * BLOCK
            if ext == "json":
                group["json"] = tar.extractfile(member).read()
    if group is not None:
        entries.append(_entry(group))
    return entries


def _entry(group: dict) -> SampleEntry:
    return SampleEntry(group["key"], group["start"], group["end"], group["sizes"],
                       parse_duration(group["json"]))


def write_sample_index(tar_path: Path) -> str:
    """Write the sample index beside `tar_path`; returns its file name, or "" for a tar
    that cannot be read to its end (a damaged shard is replayed from its bytes instead, so
    that a resume sees exactly what the reader saw)."""
    name = sample_index_name(Path(tar_path).name)
    try:
        entries = scan_tar(Path(tar_path))
    except (tarfile.TarError, OSError, EOFError):
        return ""
    rows = [[e.key, e.start, e.end, e.sizes, e.duration_s] for e in entries]
    (Path(tar_path).parent / name).write_text(json.dumps({"version": 1, "samples": rows}))
    return name


def load_sample_index(url: str, stats: Counter) -> list[SampleEntry]:
    """The records of one shard's sample index (local path or URL)."""
    data = read_bytes(url)
    stats["bytes_read"] += len(data)
    return [SampleEntry(k, s, e, sizes, d) for k, s, e, sizes, d in json.loads(data)["samples"]]

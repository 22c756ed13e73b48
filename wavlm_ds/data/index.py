"""The shard index (`index.json`) that make_shards writes and readers check against.

{"version": 1, "sample_rate": 16000, "total_samples": N, "total_hours": H,
 "shards": [{"name": "train-000000.tar", "num_samples": n, "hours": h, "bytes": b,
             "sha256": "...", "sample_index": "train-000000.idx.json"}]}

Shard names are relative to the index's directory (a local path or a URL). `sample_index`
names the shard's per-sample index (data/sample_index.py: byte offsets, sizes, durations),
which lets a resumed reader skip to its position without reading tar bytes; shard sets made
before it existed have "" there (`tools/make_shards.py --reindex DIR/index.json` adds them). Webdataset cannot tell a tar cut cleanly
at a member boundary from a complete one; the index's counts can.
"""
from __future__ import annotations

import hashlib
import json
import tarfile
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from wavlm_ds.config import ConfigError
from wavlm_ds.data.io import parent_url, read_bytes, redact
from wavlm_ds.data.sample_index import write_sample_index

INDEX_NAME = "index.json"


class ShardIndexError(ConfigError):
    """A missing or malformed index.json: a configuration problem (bad path or stale shards)."""


@dataclass(frozen=True)
class ShardInfo:
    name: str
    num_samples: int
    hours: float
    bytes: int
    sha256: str
    sample_index: str = ""  # file name of the per-shard sample index, "" if none

    @classmethod
    def from_file(cls, path: Path, num_samples: int, hours: float) -> "ShardInfo":
        return cls(Path(path).name, num_samples, hours, Path(path).stat().st_size,
                   sha256_file(Path(path)))


@dataclass(frozen=True)
class ShardIndex:
    path: str  # local path or URL of index.json
    shards: tuple[ShardInfo, ...]
    sample_rate: int

    def shard_paths(self) -> list[Path]:
        return [Path(u) for u in self.shard_urls()]

    def shard_urls(self) -> list[str]:
        return [f"{parent_url(self.path)}/{s.name}" for s in self.shards]

    def sample_index_urls(self) -> list[str | None]:
        return [f"{parent_url(self.path)}/{s.sample_index}" if s.sample_index else None
                for s in self.shards]


_hashed = Counter()  # bytes this process has hashed (the resume test counts them)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
            _hashed["bytes"] += len(block)
    return h.hexdigest()


def bytes_hashed() -> int:
    """Bytes sha256_file has read in this process so far."""
    return _hashed["bytes"]


def write_index(out_dir: Path, shards: list[ShardInfo], sample_rate: int = 16000) -> Path:
    """index.json under `out_dir`, and beside it the sample index of each shard that is
    there (a shard not on this disk gets none)."""
    shards = [replace(s, sample_index=write_sample_index(Path(out_dir) / s.name)
                      if (Path(out_dir) / s.name).is_file() else "") for s in shards]
    data = {"version": 1, "sample_rate": sample_rate,
            "total_samples": sum(s.num_samples for s in shards),
            "total_hours": sum(s.hours for s in shards), "shards": [asdict(s) for s in shards]}
    path = Path(out_dir) / INDEX_NAME
    path.write_text(json.dumps(data, indent=1))
    return path


def reindex(index_path: Path) -> Path:
    """Add sample indexes to a local shard set made before they existed (rewrites index.json)."""
    index = read_index(index_path)
    return write_index(Path(index_path).parent, list(index.shards), index.sample_rate)


def read_index(path: Path | str) -> ShardIndex:
    """The index at a local path or URL; ShardIndexError naming it if absent or malformed."""
    path = str(path)
    try:
        data = json.loads(read_bytes(path))
        shards = tuple(ShardInfo(**s) for s in data["shards"])
        return ShardIndex(path, shards, int(data.get("sample_rate", 16000)))
    except FileNotFoundError:
        raise ShardIndexError(f"{redact(path)}: index not found; make shards with "
                              "tools/make_shards.py (a URL: check it and its credentials)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ShardIndexError(f"{redact(path)}: malformed shard index ({type(err).__name__}: "
                              f"{err}); regenerate it with tools/make_shards.py") from None
    except Exception as err:  # a URL that still failed after the retries (aiohttp, botocore, ...)
        raise ShardIndexError(f"{redact(path)}: unreadable index ({type(err).__name__}: "
                              f"{redact(str(err))})") from None


def count_samples(tar_path: Path) -> tuple[int, str | None]:
    """(number of distinct sample keys, error or None) by reading the tar headers."""
    keys = set()
    try:
        with tarfile.open(tar_path, "r|*") as tar:
            for member in tar:
                if member.isfile():
                    keys.add(member.name.rsplit("/", 1)[-1].split(".", 1)[0])
    except (tarfile.TarError, OSError, EOFError) as err:
        return len(keys), f"{type(err).__name__}: {err}"
    return len(keys), None


def verify_shards(index_path: Path) -> list[str]:
    """Re-read every shard against the index; returns the problems (empty = complete)."""
    index = read_index(index_path)
    problems = []
    for info, path in zip(index.shards, index.shard_paths()):
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        if path.stat().st_size != info.bytes:
            problems.append(f"{path}: {path.stat().st_size} bytes, index says {info.bytes}")
        elif sha256_file(path) != info.sha256:
            problems.append(f"{path}: sha256 differs from the index")
        count, error = count_samples(path)
        if error or count != info.num_samples:
            problems.append(f"{path}: {count} samples readable, index says {info.num_samples}"
                            + (f" ({error})" if error else ""))
    return problems


def sources_hours(sources) -> tuple[float, list[str]]:
    """(hours of the sources whose `shards` is an index.json still on disk, names of the
    sources without a readable index)."""
    total, missing = 0.0, []
    for src in sources:
        path = Path(str(src.shards))
        try:
            hours = sum(s.hours for s in read_index(path).shards) if path.suffix == ".json" \
                else None
        except ShardIndexError:
            hours = None
        if hours is None:
            missing.append(src.name)
        else:
            total += hours
    return total, missing

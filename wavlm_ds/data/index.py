"""The shard index (`index.json`) that make_shards writes and readers check against.

{"version": 1, "sample_rate": 16000, "total_samples": N, "total_hours": H,
 "shards": [{"name": "train-000000.tar", "num_samples": n, "hours": h, "bytes": b,
             "sha256": "..."}]}

Shard names are relative to the index's directory. Webdataset cannot tell a tar cut cleanly
at a member boundary from a complete one; the index's counts can.
"""
from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

from wavlm_ds.config import ConfigError

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

    @classmethod
    def from_file(cls, path: Path, num_samples: int, hours: float) -> "ShardInfo":
        return cls(Path(path).name, num_samples, hours, Path(path).stat().st_size,
                   sha256_file(Path(path)))


@dataclass(frozen=True)
class ShardIndex:
    path: Path
    shards: tuple[ShardInfo, ...]
    sample_rate: int

    def shard_paths(self) -> list[Path]:
        return [self.path.parent / s.name for s in self.shards]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def write_index(out_dir: Path, shards: list[ShardInfo], sample_rate: int = 16000) -> Path:
    data = {"version": 1, "sample_rate": sample_rate,
            "total_samples": sum(s.num_samples for s in shards),
            "total_hours": sum(s.hours for s in shards), "shards": [asdict(s) for s in shards]}
    path = Path(out_dir) / INDEX_NAME
    path.write_text(json.dumps(data, indent=1))
    return path


def read_index(path: Path) -> ShardIndex:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        shards = tuple(ShardInfo(**s) for s in data["shards"])
        return ShardIndex(path, shards, int(data.get("sample_rate", 16000)))
    except FileNotFoundError:
        raise ShardIndexError(f"{path}: index not found; make shards with tools/make_shards.py") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ShardIndexError(f"{path}: malformed shard index ({type(err).__name__}: {err}); "
                          "regenerate it with tools/make_shards.py") from None


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

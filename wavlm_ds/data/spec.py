"""Shard specs -> concrete shard lists with sample counts.

A spec is one of: a path to an index.json (shards relative to it, counts from it); a brace
pattern ("/d/train-{000000..000009}.tar"); a comma-separated list of those; or a `pipe:`
URL (runs a shell command: refused unless `data.allow_pipe: true`). Sample counts come from
an index.json: the given one, or one beside the shards.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import braceexpand

from wavlm_ds.config import ConfigError
from wavlm_ds.data.index import INDEX_NAME, read_index


@dataclass(frozen=True)
class Shard:
    url: str  # a local path or a pipe: command
    num_samples: int | None  # from an index; None if unknown


def expand_spec(spec: str, allow_pipe: bool, key: str = "data.sources") -> list[Shard]:
    """All shards of `spec`; ConfigError naming the spec when it matches nothing."""
    shards: list[Shard] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part.startswith("pipe:"):
            if not allow_pipe:
                raise ConfigError(f"{key}: shard spec {part!r} is a pipe: URL, which runs a "
                                  "shell command; set data.allow_pipe: true to allow it")
            shards += [Shard(url, None) for url in braceexpand.braceexpand(part)]
        elif part.endswith(".json"):
            index = read_index(Path(part))
            shards += [Shard(str(p), s.num_samples) for p, s in zip(index.shard_paths(), index.shards)]
        else:
            shards += _local_shards(part, key)
    if not shards:
        raise ConfigError(f"{key}: shard spec {spec!r} matches no shard")
    return shards


def _local_shards(pattern: str, key: str) -> list[Shard]:
    paths = [Path(p) for p in braceexpand.braceexpand(pattern)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f"{key}: shard pattern {pattern!r} matches nothing at {missing[0]}"
                          f" ({len(missing)} of {len(paths)} missing)")
    counts: dict[str, int] = {}
    for parent in {p.parent for p in paths}:
        if (parent / INDEX_NAME).is_file():
            index = read_index(parent / INDEX_NAME)
            counts.update({str(parent / s.name): s.num_samples for s in index.shards})
    return [Shard(str(p), counts.get(str(p))) for p in paths]

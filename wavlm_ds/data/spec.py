"""Shard specs -> concrete shard lists with sample counts.

A spec is one of: a path to an index.json (shards relative to it, counts from it); a brace
pattern ("/d/train-{000000..000009}.tar"); a URL or URL pattern (s3://, gs://, https://: read
through fsspec, see data/io.py); a comma-separated list of those; or a `pipe:`
URL (runs a shell command: refused unless `data.allow_pipe: true`). Sample counts come from
an index.json (local or a URL): the given one, or one beside local shards.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import braceexpand

from wavlm_ds.config import ConfigError
from wavlm_ds.data.index import INDEX_NAME, read_index
from wavlm_ds.data.io import is_url


@dataclass(frozen=True)
class Shard:
    url: str  # a local path, a URL (fsspec) or a pipe: command
    num_samples: int | None  # from an index; None if unknown
    sample_index: str | None = None  # URL of its per-sample index (data/sample_index.py)


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
            index = read_index(part)
            shards += [Shard(u, s.num_samples, i) for u, s, i in
                       zip(index.shard_urls(), index.shards, index.sample_index_urls())]
        elif is_url(part):  # no existence check: a missing object is a failed shard
            shards += [Shard(url, None) for url in braceexpand.braceexpand(part)]
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
    known: dict[str, Shard] = {}
    for parent in {p.parent for p in paths}:
        if (parent / INDEX_NAME).is_file():
            index = read_index(parent / INDEX_NAME)
            known.update({str(parent / s.name): Shard(str(parent / s.name), s.num_samples, i)
                          for s, i in zip(index.shards, index.sample_index_urls())})
    return [known.get(str(p), Shard(str(p), None)) for p in paths]

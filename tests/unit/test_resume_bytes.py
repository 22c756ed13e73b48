"""Resume without replaying tar bytes: the sample index is replayed instead, and exactly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import write_shards
from tests.unit.test_pipeline import data_cfg, keys_of
from wavlm_ds.data import TrainLoader
from wavlm_ds.data.index import INDEX_NAME, read_index, reindex


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory) -> tuple[Path, Path]:
    """(index with sample indexes, an older copy of the same shards without them)."""
    new = write_shards(tmp_path_factory.mktemp("new"), "r", num_shards=8, per_shard=10,
                       seed=7, seconds=(0.5, 2.0))
    old_dir = tmp_path_factory.mktemp("old")
    data = json.loads(new.read_text())
    for s in data["shards"]:
        (old_dir / s["name"]).symlink_to(new.parent / s["name"])
        s.pop("sample_index")  # as written before sample indexes existed
    (old_dir / INDEX_NAME).write_text(json.dumps(data))
    return new, old_dir / INDEX_NAME


@pytest.mark.parametrize("resampled", [False, True])
def test_resume_reads_at_most_one_shard_and_stays_exact(shard_sets, resampled, caplog):
    new, old = shard_sets
    largest = max(s.bytes for s in read_index(new).shards)
    results = {}
    for name, index in (("new", new), ("old", old)):
        cfg = data_cfg(index, num_workers=0, resampled=resampled)
        full = TrainLoader(cfg, 3, 0, 1, seed=2)
        reference = keys_of(full, 20)
        resumed = TrainLoader(cfg, 3, 0, 1, seed=2)
        resumed.load_state_dict({"epoch": 0, "batches_consumed": 15})
        it = iter(resumed)
        first = next(it)["keys"]
        results[name] = resumed.stats()["bytes_read"]  # to resume and deliver one batch
        assert first + [k for _ in range(4) for k in next(it)["keys"]] == reference[45:]
    assert results["new"] <= largest < results["old"], (results, largest)
    assert "has no sample index" in caplog.text and "--reindex" in caplog.text


def test_reindex_adds_sample_indexes(shard_sets, tmp_path):
    _, old = shard_sets
    for p in old.parent.iterdir():
        (tmp_path / p.name).symlink_to(p.resolve()) if p.suffix == ".tar" else \
            (tmp_path / p.name).write_bytes(p.read_bytes())
    index = read_index(reindex(tmp_path / INDEX_NAME))
    assert all(s.sample_index and (tmp_path / s.sample_index).is_file() for s in index.shards)

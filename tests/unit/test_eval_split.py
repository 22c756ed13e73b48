"""EvalLoader at any world size: every validation sample exactly once, equal batch counts."""
from __future__ import annotations

import tarfile
from collections import Counter
import pytest

from tests.integration.conftest import write_shards
from wavlm_ds.config import ConfigError, DataConfig
from wavlm_ds.data import EvalLoader
from wavlm_ds.data.index import ShardInfo, write_index

PER_SHARD = (5, 3, 7, 2)  # 4 uneven shards, 17 samples


@pytest.fixture(scope="module")
def valid_spec(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("valid")
    return ",".join(str(write_shards(root / f"s{i}", f"v{i}", num_shards=1, per_shard=n,
                                     seed=10 + i, seconds=(0.5, 1.5)))
                    for i, n in enumerate(PER_SHARD))


@pytest.mark.parametrize("world", [1, 2, 7, 128])
def test_every_sample_once_and_equal_batch_counts(valid_spec, world):
    cfg = DataConfig(max_duration_s=2.0, min_duration_s=0.3)
    seen: Counter = Counter()
    batch_counts = set()
    for rank in range(world):
        loader = EvalLoader(valid_spec, 2, rank, world, max_batches=1000, cfg=cfg)
        batches = list(loader)
        batch_counts.add(len(batches))
        assert len(batches) == loader.num_batches
        for b in batches:
            assert b["audio"].shape[0] == 2
            seen.update(k for k, ok in zip(b["keys"], b["valid"].tolist()) if ok)
    assert len(batch_counts) == 1, f"unequal batch counts {batch_counts}"
    assert batch_counts.pop() == -(-(-(-sum(PER_SHARD) // world)) // 2)
    assert sum(seen.values()) == sum(PER_SHARD) and set(seen.values()) == {1}
    assert len({k[:2] for k in seen}) == len(PER_SHARD)  # keys v0.. v3: every shard


def test_empty_validation_set_is_a_startup_error(tmp_path):
    write_index(tmp_path, [])
    with pytest.raises(ConfigError, match="data.valid_shards: .* matches no shard"):
        EvalLoader(str(tmp_path / "index.json"), 2, 0, 2, 10, DataConfig())
    tarfile.open(tmp_path / "e-000000.tar", "w").close()  # a shard without samples
    write_index(tmp_path, [ShardInfo.from_file(tmp_path / "e-000000.tar", 0, 0.0)])
    with pytest.raises(ConfigError, match=r"data.valid_shards: the validation set .* no sample"):
        EvalLoader(str(tmp_path / "index.json"), 2, 0, 2, 10, DataConfig())


def test_a_rank_without_a_share_still_runs_the_batches(valid_spec):
    loader = EvalLoader(valid_spec, 4, 100, 128, 10, DataConfig(max_duration_s=2.0,
                                                                 min_duration_s=0.3))
    batches = list(loader)
    assert len(batches) == 1 and not batches[0]["valid"].any()

"""Shards and index.json over a real HTTP server on 127.0.0.1 (fsspec): retries, cut
responses, 404s, and resume by range requests."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.http_server import serve
from tests.integration.conftest import write_shards
from tests.unit.test_pipeline import data_cfg, keys_of
from wavlm_ds.config import ConfigError
from wavlm_ds.data import TrainLoader


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("web"), "w", num_shards=4, per_shard=6,
                        seed=4, seconds=(0.5, 2.0))


def test_training_stream_reads_through_fsspec_and_resumes_by_range(corpus):
    local = keys_of(TrainLoader(data_cfg(corpus, num_workers=0), 2, 0, 1, seed=1), 9)
    with serve(corpus.parent) as server:
        cfg = data_cfg(f"{server.url}/index.json", num_workers=0)
        assert keys_of(TrainLoader(cfg, 2, 0, 1, seed=1), 9) == local
        resumed = TrainLoader(cfg, 2, 0, 1, seed=1)
        resumed.load_state_dict({"epoch": 0, "batches_consumed": 5})
        assert keys_of(resumed, 4) == local[10:]


def test_first_requests_failing_are_retried_and_counted(corpus):
    with serve(corpus.parent, fail_first=3) as server:  # the index's first 3 requests fail
        loader = TrainLoader(data_cfg(f"{server.url}/index.json", num_workers=0), 2, 0, 1, 1)
        assert server.requests == 4
        server.fail_first = server.requests + 2  # and then the first shard's first 2
        keys = keys_of(loader, 2)
    assert all(keys)
    retries = {k: v for k, v in loader.stats().items() if k.startswith("retries:")}
    assert sum(retries.values()) == 2 and all(server.url in k for k in retries)


def test_cut_response_counts_the_samples_lost(corpus):
    with serve(corpus.parent, cut=("w-000002.tar",)) as server:
        loader = TrainLoader(data_cfg(f"{server.url}/index.json", num_workers=0), 2, 0, 1, 1)
        it = iter(loader)
        batches = [next(it) for _ in range(loader.batches_per_epoch)]
    stats = loader.stats()
    url = f"{server.url}/w-000002.tar"
    assert stats[f"truncated_shard:{url}"] == 1 and stats[f"lost_samples:{url}"] >= 1
    assert 0 < sum(int(b["valid"].sum()) for b in batches) < 24


def test_index_url_that_404s_is_a_startup_error(corpus):
    with serve(corpus.parent) as server:
        with pytest.raises(ConfigError, match=f"{server.url}/missing/index.json: index not found"):
            TrainLoader(data_cfg(f"{server.url}/missing/index.json"), 2, 0, 1, seed=1)

"""Unreadable data fails loudly: failed pipe: commands, shards that vanish, keyed skips."""
from __future__ import annotations

import pytest

from tests.integration.conftest import write_shards
from tests.unit.test_pipeline import data_cfg
from wavlm_ds.config import DataConfig, SourceConfig
from wavlm_ds.data import DataSourceError, TrainLoader
from wavlm_ds.data.io import redact, redact_config


def test_failing_pipe_source_stops_with_its_error():
    command = "pipe:sh -c 'echo no credentials for bucket-{0..3} >&2; exit 3'"
    cfg = DataConfig(sources=(SourceConfig("cloud", command),), resampled=True, allow_pipe=True,
                     num_workers=0, max_failed_shards_in_a_row=3)
    with pytest.raises(DataSourceError) as err:
        next(iter(TrainLoader(cfg, 2, 0, 1, seed=0)))
    text = str(err.value)
    assert "'cloud'" in text and "3 shards in a row" in text
    assert "exited with status 3" in text and "no credentials for bucket-" in text


def test_a_shard_that_vanishes_is_a_counted_failed_shard(tmp_path):
    index = write_shards(tmp_path, "g", num_shards=3, per_shard=4, seed=1)
    (tmp_path / "g-000001.tar").unlink()  # gone between planning and reading
    loader = TrainLoader(data_cfg(index, num_workers=0), 2, 0, 1, seed=0)
    it = iter(loader)
    batches = [next(it) for _ in range(loader.batches_per_epoch)]
    stats = loader.stats()
    assert stats[f"truncated_shard:{tmp_path / 'g-000001.tar'}"] == 1
    assert stats[f"lost_samples:{tmp_path / 'g-000001.tar'}"] == 4
    assert sum(int(b["valid"].sum()) for b in batches) == 8


def test_redact_hides_credentials():
    assert redact("https://user:secret@host/a.tar?X-Amz-Signature=abc&t=1") == \
        "https://***@host/a.tar?***"
    assert redact("s3://bucket/train-{000..009}.tar") == "s3://bucket/train-{000..009}.tar"
    saved = redact_config({"data": {"sources": [{"shards": "https://u:pw@h/i.json?sig=1"}]}})
    assert saved == {"data": {"sources": [{"shards": "https://***@h/i.json?***"}]}}

"""train.py through the launcher (2 ranks) with shards on a real HTTP server (fsspec), and
sources that cannot be read: every rank must stop with the documented exit code."""
from __future__ import annotations

import time

import pytest

from tests.http_server import serve
from tests.integration.conftest import COMMON, ds_config, launch, metrics

pytestmark = pytest.mark.slow
NATIVE = ds_config(precision="fp32")  # the subject is I/O, not the number format
FEW = COMMON + ["training.max_steps=2", "training.save_every_steps=1000", "data.num_workers=1"]


def source(url: str) -> str:
    return f"data.sources=[{{name: web, shards: '{url}'}}]"


def test_training_reads_through_fsspec_after_failed_first_requests(tiny_corpus, tmp_path):
    with serve(tiny_corpus["train"].parent, fail_first=3) as server:
        code = launch(tmp_path, tiny_corpus, FEW + [source(f"{server.url}/index.json")],
                      NATIVE)
    log = (tmp_path / "launch_ds_0.log").read_text()
    assert code == 0, log[-3000:]
    assert [r["step"] for r in metrics(tmp_path)] == [1, 2]
    assert "503" in log and "retry 1 of 4" in log  # the first requests failed, were retried


def test_index_url_that_404s_stops_every_rank_at_startup(tiny_corpus, tmp_path):
    with serve(tiny_corpus["train"].parent) as server:
        missing = f"{server.url}/gone/index.json"
        assert launch(tmp_path, tiny_corpus, FEW + [source(missing)], NATIVE) == 2
    assert f"{missing}: index not found" in (tmp_path / "launch_ds_0.log").read_text()


def test_failing_pipe_source_stops_every_rank(tiny_corpus, tmp_path):
    failing = 'pipe:sh -c "echo access denied >&2; exit 7" #{0..3}'  # 4 shards
    t0 = time.monotonic()
    code = launch(tmp_path, tiny_corpus, FEW + [
        source(failing), "data.allow_pipe=true", "data.resampled=true",
        "data.max_failed_shards_in_a_row=3"], NATIVE)
    log = (tmp_path / "launch_ds_0.log").read_text()
    assert code == 5, log[-3000:]
    assert "3 shards in a row yielded no sample" in log and "access denied" in log
    assert "exited with status 7" in log
    assert time.monotonic() - t0 < 600

"""BEST-RQ and k-means targets through the real launcher (2 CPU ranks, ZeRO-2, bf16):
each objective's loss falls, and BEST-RQ's quantizer is the same on every rank and after
a resume (restored from the checkpoint, not re-drawn)."""
from __future__ import annotations

import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import COMMON, ds_config, launch, metrics
from wavlm_ds.launch import ROOT

pytestmark = pytest.mark.slow
K = 8
FINGERPRINT = re.compile(r"BEST-RQ targets: quantizer sha256 ([0-9a-f]{16})")


@pytest.fixture(scope="module")
def labels(tiny_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("labels")
    subprocess.run([sys.executable, str(ROOT / "tools" / "kmeans_labels.py"),
                    str(tiny_corpus["train"]), str(tiny_corpus["valid"]), "--out", str(out),
                    "--k", str(K), "--fit-shards", "4"], check=True, cwd=ROOT, timeout=300)
    return out


def falls(run: Path) -> tuple[float, float]:
    losses = [r["loss"] for r in metrics(run)]
    return statistics.median(losses[:4]), statistics.median(losses[-4:])


OBJECTIVES = {
    "best_rq": ["objective.name=best_rq", "objective.codebook_size=512"],
    "kmeans": ["objective.name=kmeans", f"objective.num_classes={K}",
               "data.label_member=labels.npy"],
}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_loss_falls(name, tiny_corpus, labels, tmp_path):
    extra = [f"data.label_sidecar_dir={labels}"] if name == "kmeans" else []
    ds = ds_config(precision="native")
    ds["scheduler"]["params"].update(total_num_steps=24, warmup_num_steps=2)
    code = launch(tmp_path, tiny_corpus, COMMON + OBJECTIVES[name] + extra + [
        "training.max_steps=24", "training.save_every_steps=1000"], ds)
    assert code == 0, (tmp_path / "launch_ds_0.log").read_text()[-3000:]
    first, last = falls(tmp_path)
    assert last < 0.85 * first, (first, last)
    rows = metrics(tmp_path)
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]
    if name == "kmeans":  # every sample had labels: none skipped for a label mismatch
        log = (tmp_path / "launch_ds_0.log").read_text()
        assert "labels, but its" not in log


def test_best_rq_quantizer_same_on_all_ranks_and_after_resume(tiny_corpus, tmp_path):
    ds = ds_config(precision="native")
    run = COMMON + OBJECTIVES["best_rq"] + ["training.save_every_steps=1000"]
    assert launch(tmp_path, tiny_corpus, run + ["training.max_steps=3"], ds) == 0
    # Resume under another seed: a re-drawn quantizer would differ; the checkpoint's must win.
    assert launch(tmp_path, tiny_corpus, run + ["training.max_steps=5", "training.seed=7"],
                  ds) == 0
    first = FINGERPRINT.findall((tmp_path / "launch_ds_0.log").read_text())
    resumed = FINGERPRINT.findall((tmp_path / "launch_ds_1.log").read_text())
    assert len(first) == 2 and len(resumed) == 2, (first, resumed)  # one line per rank
    assert len(set(first + resumed)) == 1
    assert [r["step"] for r in metrics(tmp_path)] == [1, 2, 3, 4, 5]

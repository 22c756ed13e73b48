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


STEPS = 24


@pytest.fixture(scope="module")
def trained(tiny_corpus, labels, tmp_path_factory):
    """name -> the directory of that objective's 24-step run, launched once on first use
    (the BEST-RQ run is also the first half of the quantizer's resume test)."""
    runs: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in runs:
            run = tmp_path_factory.mktemp(name)
            extra = [f"data.label_sidecar_dir={labels}"] if name == "kmeans" else []
            code = launch(run, tiny_corpus, COMMON + OBJECTIVES[name] + extra + [
                f"training.max_steps={STEPS}", "training.save_every_steps=1000"], _ds())
            assert code == 0, (run / "launch_ds_0.log").read_text()[-3000:]
            runs[name] = run
        return runs[name]
    return get


def _ds() -> dict:
    ds = ds_config(precision="fp32")
    ds["scheduler"]["params"].update(total_num_steps=STEPS + 2, warmup_num_steps=2)
    return ds


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_loss_falls(name, trained):
    run = trained(name)
    first, last = falls(run)
    assert last < 0.85 * first, (first, last)
    rows = metrics(run)
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]
    if name == "kmeans":  # every sample had labels: none skipped for a label mismatch
        log = (run / "launch_ds_0.log").read_text()
        assert "labels, but its" not in log


def test_best_rq_quantizer_same_on_all_ranks_and_after_resume(tiny_corpus, trained):
    run = trained("best_rq")  # saved at its last step
    # Resume under another seed: a re-drawn quantizer would differ; the checkpoint's must win.
    items = COMMON + OBJECTIVES["best_rq"] + ["training.save_every_steps=1000"]
    assert launch(run, tiny_corpus, items + [f"training.max_steps={STEPS + 2}",
                                             "training.seed=7"], _ds()) == 0
    first = FINGERPRINT.findall((run / "launch_ds_0.log").read_text())
    resumed = FINGERPRINT.findall((run / "launch_ds_1.log").read_text())
    assert len(first) == 2 and len(resumed) == 2, (first, resumed)  # one line per rank
    assert len(set(first + resumed)) == 1
    assert [r["step"] for r in metrics(run)] == list(range(1, STEPS + 3))

"""tools/compare_objectives.py end to end on a tiny synthesized corpus: k-means labels, the
k-means and HuBERT iteration-2 objectives pretrained through the launcher,
both probes, the table; a re-run reuses it all."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from wavlm_ds.launch import ROOT, launcher_env

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")),
                                 reason="needs espeak-ng and sox (make setup installs them)")]


def test_compare_two_objectives_on_a_tiny_corpus(tmp_path):
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, str(ROOT / "tools" / "synth_corpus.py"), "--out", str(corpus),
                    "--utterances", "120", "--noise", "4"], check=True, cwd=ROOT, timeout=300,
                   capture_output=True)
    cmd = [sys.executable, str(ROOT / "tools" / "compare_objectives.py"), "--run-dir",
           str(tmp_path / "cmp"), "--corpus", str(corpus), "--steps", "3", "--k", "8",
           "--objectives", "kmeans,kmeans_it2", "--epochs", "1", "--hidden", "8",
           "--resamples", "50", "--max-train-utts", "40", "--max-test-utts", "16"]
    proc = subprocess.run(cmd + ["--probe-runs", "2"], capture_output=True, text=True, cwd=ROOT,
                          timeout=900, env=launcher_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "cmp" / "results.md").read_text()
    main, spread = [block.splitlines() for block in table.split("\n\n") if block.startswith("|")]
    assert [line.split(" | ")[0] for line in main[2:]] == [
        "| kmeans", "| kmeans_it2", "| log-Mel baseline"]
    # The probe-seed table: two runs per objective, and each run ranks exactly one first.
    assert "seed 0" in spread[0] and "seed 1" in spread[0]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in spread[2:]]
    assert [row[0] for row in cells] == ["kmeans", "kmeans_it2"]
    wins = [[int(c.split(" of ")[0]) for c in row if c.endswith(" of 2")] for row in cells]
    assert [sum(col) for col in zip(*wins)] == [2, 2]  # WER, F0
    assert "kmeans_it2: k=8 on block 2 of 4 of the kmeans export" in table
    result = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert set(result["runs"]) == {"kmeans", "kmeans_it2"}
    it2 = json.loads((tmp_path / "cmp" / "labels_it2" / "kmeans.json").read_text())
    assert it2["features"]["layer"] == 2 and it2["features"]["source"].endswith("kmeans/export")
    assert result["iteration2_labels"]["layer"] == 2
    assert [r["seed"] for r in result["probe_runs"]] == [0, 1]
    assert result["runs"]["kmeans"]["valid"]["accuracy"] >= 0
    assert json.loads((tmp_path / "cmp" / "labels" / "kmeans.json").read_text())["k"] == 8
    # A second run trains nothing again: every export and the labels are reused (one probe
    # seed is enough to show it).
    again = subprocess.run(cmd + ["--probe-runs", "1"], capture_output=True, text=True,
                           cwd=ROOT, timeout=900, env=launcher_env())
    assert again.returncode == 0 and "trained in" not in again.stdout
    assert again.stdout.count("k-means labels exist") == 2  # iteration 1 and 2

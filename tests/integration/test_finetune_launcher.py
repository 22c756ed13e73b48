"""tools/finetune_ctc.py under the real `deepspeed` launcher: 2 CPU ranks share each batch,
average gradients, and rank 0 alone writes the summary and checkpoint."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.exports import tiny_export
from wavlm_ds.launch import ROOT, free_port, launcher_env

if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is needed for the tiny corpus", allow_module_level=True)


def test_two_ranks_under_the_launcher(tmp_path):
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, str(ROOT / "tools" / "synth_corpus.py"), "--out", str(corpus),
                    "--utterances", "24"], check=True, capture_output=True, env=launcher_env())
    export = tiny_export(tmp_path / "export")
    out = tmp_path / "ft"
    cmd = [str(Path(sys.executable).with_name("deepspeed")), "--hostfile",
           str(ROOT / "hostfiles" / "localhost"), "--no_ssh_check", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(ROOT / "tools" / "finetune_ctc.py"),
           str(export), "--corpus", str(corpus), "--out", str(out), "--steps", "4",
           "--head-only-steps", "1", "--batch-size", "4", "--resamples", "20"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=launcher_env(),
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["train_loss_curve"][-1]["step"] == 4
    assert (out / "checkpoint" / "model.safetensors").is_file()
    assert proc.stdout.count("[finetune_ctc]") == 1  # rank 0 reports, rank 1 does not

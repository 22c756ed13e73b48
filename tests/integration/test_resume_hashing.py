"""Checkpoint resume at 2 ranks: rank 0 alone hashes the checkpoint, once."""
from __future__ import annotations

import json
import re

from tests.integration.conftest import COMMON, ds_config, launch


def test_resume_hashes_the_checkpoint_once(tiny_corpus, tmp_path):
    steps = ["training.save_every_steps=1000", "data.num_workers=0"]
    assert launch(tmp_path, tiny_corpus, COMMON + steps + ["training.max_steps=2"],
                  ds_config()) == 0
    manifest = json.loads((tmp_path / "checkpoints" / "step00000002" / "manifest.json").read_text())
    size = sum(e["bytes"] for e in manifest["files"])
    assert launch(tmp_path, tiny_corpus, COMMON + steps + ["training.max_steps=3"],
                  ds_config()) == 0
    log = (tmp_path / "launch_ds_1.log").read_text()
    hashed = {int(r): int(n) for r, n in re.findall(r"resumed from \S+step00000002: rank (\d) "
                                                     r"hashed (\d+) bytes", log)}
    assert sorted(hashed) == [0, 1], log[-3000:]
    assert hashed[1] == 0 and size <= hashed[0] <= 1.1 * size, (hashed, size)

"""Checkpoint manager: manifest commit, fallback to the last complete save, safe loading."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from wavlm_ds.checkpoint import (LATEST, MANIFEST, CheckpointError, CheckpointManager,
                                 forced_safe_loads, resolve_resume, safe_load, verify_checkpoint)
from wavlm_ds.launch import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine():
    """A one-rank DeepSpeed engine (bf16 ZeRO-2 FusedAdam, as the recipe) on a tiny MLP."""
    import deepspeed
    from wavlm_ds.checkpoint import SafeCheckpointEngine
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))
    deepspeed.init_distributed()
    ds = json.loads((ROOT / "ds_configs/cpu_smoke.json").read_text())
    ds["train_batch_size"] = 16
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 1))
    eng, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    eng.checkpoint_engine = SafeCheckpointEngine(eng._config, 0)
    for _ in range(4):
        eng.backward(eng(torch.randn(4, 8).bfloat16()).float().pow(2).mean())
        eng.step()
    return eng


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/wavlm_ds_pwned",))


def test_save_commits_manifest_and_latest(engine, tmp_path):
    mgr = CheckpointManager(tmp_path, 0, 1, keep_last=2)
    for step in (1, 2, 3):
        mgr.save(engine, step, {"step": step, "rng_cpu": torch.get_rng_state()}, {"step": step})
    assert (tmp_path / LATEST).read_text() == "step00000003"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["step00000002", "step00000003"]
    manifest = json.loads((tmp_path / "step00000003" / MANIFEST).read_text())
    names = {e["file"] for e in manifest["files"]}
    assert "trainer_state_rank00000.pt" in names and "mp_rank_00_model_states.pt" in names
    assert verify_checkpoint(tmp_path / "step00000003") is None
    state = mgr.load(engine, mgr.find_latest_valid())
    assert state["step"] == 3 and torch.equal(state["rng_cpu"], torch.get_rng_state())


def test_partial_checkpoint_is_never_loaded(engine, tmp_path):
    mgr = CheckpointManager(tmp_path, 0, 1, keep_last=3)
    mgr.save(engine, 1, {"step": 1}, {})
    mgr.save(engine, 2, {"step": 2}, {})
    # A crash after the shards but before the manifest: latest still names step 2 here,
    # and even a `latest` naming the partial dir must fall back.
    (tmp_path / "step00000002" / MANIFEST).unlink()
    (tmp_path / LATEST).write_text("step00000002")
    assert mgr.find_latest_valid() == "step00000001"
    # A truncated shard is caught by size/sha256.
    mgr.save(engine, 3, {"step": 3}, {})
    shard = tmp_path / "step00000003" / "mp_rank_00_model_states.pt"
    shard.write_bytes(shard.read_bytes()[:-10])
    assert "wrong size" in verify_checkpoint(tmp_path / "step00000003")
    assert mgr.find_latest_valid() == "step00000001"
    with pytest.raises(CheckpointError, match="cannot resume"):
        mgr.load(engine, "step00000003")


def test_malicious_pickle_is_refused(tmp_path):
    bad = tmp_path / "trainer_state_rank00000.pt"
    torch.save({"x": Evil()}, bad)
    if os.path.exists("/tmp/wavlm_ds_pwned"):
        os.remove("/tmp/wavlm_ds_pwned")
    with pytest.raises(CheckpointError, match="refused"):
        safe_load(bad)
    with forced_safe_loads(), pytest.raises(pickle.UnpicklingError):
        torch.load(bad, weights_only=False)  # what DeepSpeed's own tools call
    assert not os.path.exists("/tmp/wavlm_ds_pwned")


def test_resolve_resume_modes(tmp_path):
    root, tag = resolve_resume("auto", tmp_path / "none")
    assert tag is None
    assert resolve_resume("never", tmp_path)[1] is None
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        resolve_resume(str(tmp_path / "missing"), tmp_path)

"""SIGKILL a rank mid-training or mid-save, relaunch with --resume auto: the run continues
from the newest complete checkpoint with bitwise identical losses and exactly one pass of
the data (issue 9, items 1 and 2)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.reliability.conftest import FULL, STEPS, launch, losses, step_keys
from wavlm_ds.checkpoint import CheckpointManager, verify_checkpoint

pytestmark = pytest.mark.slow

# (step at whose start a rank is killed, rank, seed); saves every 3 steps.
KILLS = [(8, 1, 1234), (5, 0, 1234)] + ([(4, 1, 1234), (11, 0, 1234), (7, 1, 7), (10, 0, 7),
                                         (3, 0, 99), (6, 1, 99)] if FULL else [])


def test_uninterrupted_epoch_is_one_pass(reference, corpus):
    keys = step_keys(reference)
    assert sorted({r for r, _ in keys}) == [0, 1] and len(keys) == 2 * STEPS
    for epoch_steps in (range(1, 7), range(7, 13)):
        seen = Counter(k for (r, s), ks in keys.items() if s in epoch_steps for k in ks)
        assert len(seen) == 96 and set(seen.values()) == {1}, "one epoch = every sample once"


@pytest.mark.parametrize("kill_step,rank,seed", KILLS)
def test_kill_rank_and_resume(kill_step, rank, seed, corpus, reference, tmp_path_factory, record):
    ref = reference if seed == 1234 else _reference(corpus, seed, tmp_path_factory)
    run = tmp_path_factory.mktemp(f"kill{kill_step}r{rank}s{seed}")
    base = [f"training.max_steps={STEPS}", "training.save_every_steps=3"]
    code = launch(run, corpus, base, seed=seed, env={"WAVLM_DS_FAULT": f"step{kill_step}@{rank}"})
    assert code != 0, "the killed run must fail"
    resume_from = CheckpointManager(run / "checkpoints", 0, 2, 1).find_latest_valid()
    expected = (kill_step - 1) // 3 * 3
    assert resume_from == (f"step{expected:08d}" if expected else None)
    assert launch(run, corpus, base, seed=seed) == 0, (run / "launch_ds_1.log").read_text()[-3000:]
    assert losses(run) == losses(ref)  # every step, bitwise
    assert step_keys(run) == step_keys(ref)  # the same samples at the same steps
    record(fault="SIGKILL one rank at a step, resume auto", case=f"step {kill_step}, rank {rank}, "
           f"seed {seed}", survived="losses bitwise, keys = one pass per epoch",
           lost=f"{kill_step - 1 - expected} step(s) recomputed")


def _reference(corpus, seed: int, factory) -> Path:
    run = factory.mktemp(f"ref{seed}")
    assert launch(run, corpus, [f"training.max_steps={STEPS}", "training.save_every_steps=3"],
                  seed=seed) == 0
    return run


ALL_PHASES = [("after_first_file", 1), ("after_all_shards", 0), ("before_manifest", 0),
              ("after_manifest", 0), ("before_latest", 0), ("after_latest", 0)]
# Each phase costs a launch: CI kills at three of them (before, at and after the commit).
SAVE_PHASES = ALL_PHASES if FULL else [ALL_PHASES[i] for i in (1, 3, 5)]
# Resuming costs a launch: CI resumes after two phases (one on each side of the commit).
RESUMED = {p for p, _ in ALL_PHASES} if FULL else {"after_all_shards", "after_manifest"}


@pytest.mark.parametrize("phase,rank", SAVE_PHASES)
def test_kill_during_save(phase, rank, corpus, reference, tmp_path, record):
    """Saves at steps 2 and 4; SIGKILL in the second save at `phase`."""
    base = ["training.max_steps=6", "training.save_every_steps=2"]
    code = launch(tmp_path, corpus, base, env={"WAVLM_DS_FAULT": f"{phase}#2@{rank}"})
    assert code != 0
    root = tmp_path / "checkpoints"
    committed = phase in ("after_manifest", "before_latest", "after_latest")
    tag = CheckpointManager(root, 0, 2, 1).find_latest_valid()
    assert tag == ("step00000004" if committed else "step00000002"), phase
    assert verify_checkpoint(root / tag) is None
    assert verify_checkpoint(root / "step00000002") is None  # never damaged by the next save
    if phase in RESUMED:
        assert launch(tmp_path, corpus, base) == 0
        ref = losses(reference)
        assert losses(tmp_path) == {s: ref[s] for s in range(1, 7)}
    record(fault="SIGKILL during checkpoint save", case=phase,
           survived=f"resume from {tag}" + (", losses bitwise" if phase in RESUMED else ""),
           lost="0 steps" if committed else "2 steps (one save interval)")

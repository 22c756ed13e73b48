"""train.py through the real deepspeed launcher, 2 CPU ranks: ZeRO-2 + bf16 + FusedAdam +
accumulation 4 + WarmupCosineLR. One reference run is shared by several assertions."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.integration.conftest import (COMMON, corpus_overrides, ds_config, launch, metrics,
                                        optimizer_state_files)
from wavlm_ds import shm
from wavlm_ds.checkpoint import LATEST, safe_load
from wavlm_ds.launch import ROOT, launcher_env, train_command

pytestmark = pytest.mark.slow
PREBUILT = Path(sys.prefix) / "torch_extensions"  # make ops builds DeepSpeed's ops here

@pytest.fixture(scope="module")
def reference(tiny_corpus, tmp_path_factory) -> Path:
    """The README's launcher command, run once and checked by the tests below: 9 steps with
    TORCH_EXTENSIONS_DIR unset and a fresh HOME (so torch's default cache would be empty)."""
    run = tmp_path_factory.mktemp("reference")
    before = set(shm.SHM_DIR.glob(shm.PREFIX + "*"))
    (run / "home").mkdir()
    so_files = {str(p): p.stat().st_mtime_ns for p in PREBUILT.rglob("*.so")}
    code = launch(run, tiny_corpus, COMMON + ["training.max_steps=9",
                                               "training.save_every_steps=100"], ds_config(),
                  env={"TORCH_EXTENSIONS_DIR": None, "HOME": str(run / "home")})
    log = (run / "launch_ds_0.log").read_text()
    assert code == 0, log[-3000:]
    # this run's buffers only: `make test` runs another launcher test beside this one
    port = re.search(r"--master_port=(\d+)", log).group(1)
    leftover = sorted(str(p) for p in set(shm.SHM_DIR.glob(shm.PREFIX + "*")) - before
                      if f"_{port}_" in p.name)
    (run / "shm_leftover.json").write_text(json.dumps(leftover))
    (run / "prebuilt_before.json").write_text(json.dumps(so_files))
    return run


def test_prebuilt_ops_without_torch_extensions_dir(reference):
    """train.py points TORCH_EXTENSIONS_DIR at the venv's prebuilt cache: nothing is
    compiled, nothing lands in ~/.cache. (model.compile through the engine is stepped by
    tools/gpu_check.sh --dry-run, tests/integration/test_gpu_check.py.)"""
    before = json.loads((reference / "prebuilt_before.json").read_text())
    assert before and {str(p): p.stat().st_mtime_ns for p in PREBUILT.rglob("*.so")} == before
    log = (reference / "launch_ds_0.log").read_text()
    for marker in ("Building extension module", "Emitting ninja build file"):
        assert marker not in log
    assert not (reference / "home" / ".cache" / "torch_extensions").exists()
    summary = json.loads((reference / "summary.json").read_text())["implementations"]
    assert summary["compile"] is False and summary["attention_impl"] == "blocked"
    assert log.count("attention blocked, log-Mel torch, compile False") == 2  # each rank


def test_ranks_release_their_shm_buffers(reference):
    # DeepSpeed's CPU comm maps a 66 MiB /dev/shm file per rank and never unlinks it.
    assert json.loads((reference / "shm_leftover.json").read_text()) == []


def test_first_run_logs_no_false_alarms(reference):
    """A first run says it starts fresh (INFO, not WARNING), and DeepSpeed's "get learning
    rate from scheduler before it has started" from its scheduler's __init__ is dropped."""
    log = (reference / "launch_ds_0.log").read_text()
    assert "before it has started" not in log
    fresh = [line for line in log.splitlines() if "starting fresh" in line]
    # rank 0 alone resolves --resume and broadcasts the choice (checkpoint.agree_on_resume)
    assert len(fresh) == 1 and all(" INFO " in line for line in fresh)


def test_lr_follows_deepspeed_warmup_cosine(reference):
    from deepspeed.runtime.lr_schedules import WarmupCosineLR
    ds = ds_config()
    params = ds["scheduler"]["params"]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=ds["optimizer"]["params"]["lr"])
    sched = WarmupCosineLR(opt, **params)
    expected = []
    for _ in range(9):
        expected.append(opt.param_groups[0]["lr"])
        sched.step()
    got = [r["lr"] for r in metrics(reference)]
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # Linear warmup from ratio 0: DeepSpeed runs the first two optimizer steps at lr 0.
    assert got[0] == 0.0 and got[1] == 0.0 and got[2] > 0.0


def test_resume_at_odd_step_is_bitwise(reference, tiny_corpus, tmp_path):
    assert launch(tmp_path, tiny_corpus, COMMON + ["training.max_steps=5"], ds_config()) == 0
    assert (tmp_path / "checkpoints" / LATEST).read_text() == "step00000005"
    manifest = json.loads((tmp_path / "checkpoints" / "step00000005" / "manifest.json").read_text())
    size = sum(e["bytes"] for e in manifest["files"])
    assert launch(tmp_path, tiny_corpus, COMMON + ["training.max_steps=9"], ds_config()) == 0
    # One verifier: rank 0 alone hashes the checkpoint, once, and broadcasts the verdict.
    log = (tmp_path / "launch_ds_1.log").read_text()
    hashed = {int(r): int(n) for r, n in re.findall(r"resumed from \S+step00000005: rank (\d) "
                                                     r"hashed (\d+) bytes", log)}
    assert sorted(hashed) == [0, 1], log[-3000:]
    assert hashed[1] == 0 and size <= hashed[0] <= 1.1 * size, (hashed, size)
    ref = {r["step"]: r["loss"] for r in metrics(reference)}
    resumed = {r["step"]: r["loss"] for r in metrics(tmp_path)}
    assert sorted(resumed) == list(range(1, 10))
    # Bitwise at every step: weights, optimizer state (incl. the CPU Adam kernel's beta
    # powers, see checkpoint.replay_cpu_adam_powers), data position, masks, mixing,
    # layerdrop and dropout RNG are all restored exactly.
    assert [resumed[s] for s in range(1, 10)] == [ref[s] for s in range(1, 10)]


def test_zero0_and_zero2_agree(reference, tiny_corpus, tmp_path):
    assert launch(tmp_path, tiny_corpus, COMMON + ["training.max_steps=5"], ds_config(stage=0)) == 0
    ref = [r["loss"] for r in metrics(reference)][:5]
    zero0 = [r["loss"] for r in metrics(tmp_path)]
    assert zero0 == pytest.approx(ref, rel=1e-2)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_validation_loss_ends_below_both_baselines(tiny_corpus, tmp_path, precision):
    """40 steps of the recipe (dropout, layerdrop, mixing on) on the tiny corpus, in bf16 and
    in fp32: the held-out loss with fixed masks beats predicting zero and interpolating each
    span. A wrong bf16 kernel fails the start-up numerics check (exit 6, module named in
    the log tail shown here), not the loss ratio."""
    ds = ds_config(precision=precision)
    ds["scheduler"]["params"].update(total_num_steps=40, warmup_num_steps=4)
    code = launch(tmp_path, tiny_corpus, COMMON + ["training.max_steps=40",
                                                   "training.save_every_steps=1000"], ds)
    assert code == 0, (tmp_path / "launch_ds_0.log").read_text()[-3000:]
    valid = metrics(tmp_path, split="valid")
    assert [r["step"] for r in valid] == [40]
    final = valid[-1]
    assert final["loss"] < final["baseline_interp"] < final["baseline_zero"], final
    assert math.isfinite(final["baseline_interp_input"]) and final["baseline_interp_input"] > 0
    train = [r["loss"] for r in metrics(tmp_path)]
    assert sum(train[-5:]) < 0.85 * sum(train[:5])


def test_nan_on_one_rank_skips_step_everywhere(tiny_corpus, tmp_path):
    code = launch(tmp_path, tiny_corpus, COMMON + ["training.max_steps=4",
                                                   "training.save_every_steps=1",
                                                   "training.keep_last_checkpoints=10"],
                  ds_config(), env={"WAVLM_DS_INJECT_NAN": "3@1"})
    assert code == 0
    rows = {r["step"]: r for r in metrics(tmp_path)}
    assert [rows[s]["skipped_steps"] for s in (1, 2, 3, 4)] == [0, 0, 1, 1]
    before, after = (tmp_path / "checkpoints" / f"step0000000{s}" for s in (2, 3))
    optimizer = optimizer_state_files(before)
    assert len(optimizer) == 2  # one ZeRO partition per rank
    for name in ["mp_rank_00_model_states.pt"] + optimizer:
        a, b = safe_load(before / name), safe_load(after / name)
        assert_tensors_equal(a, b, ignore={"global_steps", "skipped_steps", "global_samples",
                                           "lr_scheduler", "step", "iteration", "client_state"})


def assert_tensors_equal(a, b, ignore: set[str], path: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{path} changed across a skipped step"
    elif isinstance(a, dict):
        for k in a:
            if k not in ignore:
                assert_tensors_equal(a[k], b[k], ignore, f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b)):
            assert_tensors_equal(x, y, ignore, f"{path}[{i}]")


def test_export_matches_engine_module(reference, tmp_path):
    from wavlm_ds.pretrained import load_pretrained
    out = tmp_path / "export"
    subprocess.run([sys.executable, str(ROOT / "tools" / "export.py"), "model", str(reference), "--out",
                    str(out)], check=True, cwd=ROOT, env=launcher_env())
    encoder, cfg = load_pretrained(out)
    module = safe_load(reference / "checkpoints" / "step00000009" / "mp_rank_00_model_states.pt")["module"]
    bf16 = {k[len("encoder."):]: v.float() for k, v in module.items() if k.startswith("encoder.")}
    for name, param in encoder.state_dict().items():
        # fp32 master weights vs the engine's bf16 copy: equal after rounding to bf16
        assert torch.equal(param.bfloat16().float(), bf16[name]), name


def test_universal_checkpoint_two_ranks_to_one(reference, tiny_corpus, tmp_path):
    """2-rank ZeRO-2 checkpoint -> ds_to_universal -> resume on 1 rank (accumulation 8)."""
    src = tmp_path / "two"
    assert launch(src, tiny_corpus, COMMON + ["training.max_steps=3"], ds_config()) == 0
    uni = tmp_path / "universal" / "step00000003"
    subprocess.run([sys.executable, str(ROOT / "tools" / "export.py"), "universal",
                    str(src / "checkpoints" / "step00000003"), "--out", str(uni)],
                   check=True, cwd=ROOT, env=launcher_env(), capture_output=True)
    hostfile = tmp_path / "one_slot"
    hostfile.write_text("localhost slots=1\n")
    one = tmp_path / "one"
    ds = ds_config(gradient_accumulation_steps=8)
    ds_path = one / "ds.json"
    one.mkdir()
    ds_path.write_text(json.dumps(ds))
    cmd = train_command(ROOT / "configs" / "demo.yaml", ds_path, one,
                        corpus_overrides(tiny_corpus) + ["training.max_steps=5", *COMMON],
                        resume=str(uni), hostfile=hostfile)
    log = one / "launch.log"
    with open(log, "w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                              env=launcher_env()).returncode
    assert code == 0, log.read_text()[-3000:]
    rows = metrics(one)
    assert [r["step"] for r in rows] == [4, 5]
    ref = {r["step"]: r["lr"] for r in metrics(reference)}
    assert [r["lr"] for r in rows] == pytest.approx([ref[4], ref[5]], rel=1e-9)
    assert all(math.isfinite(r["loss"]) for r in rows)

"""The GPU check's driver without the GPU: its plan and budget, the runner's limits, partial
results and log cap, the FusedAdam fallback, the wheelhouse, and the prebuilt-op warning."""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from wavlm_ds import prebuild_ops as P
from wavlm_ds.bench import gpu_check as G
from wavlm_ds.bench import wheelhouse as W
from wavlm_ds.bench.stages import CappedLog, Runner, Stage

ROOT = Path(__file__).resolve().parents[2]


def option_values(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, x in enumerate(command[:-1]) if x == flag]


def test_plan_order_budget_and_the_eager_stage_really_eager(tmp_path):
    stages = G.plan(tmp_path, dry_run=False, cache=G.GPU_CACHE)
    assert [s.name for s in stages] == list(G.STAGES) == [
        "wheels", "prebuild_ops", "selftest_sdpa", "eager", "compiled", "selftest_flex",
        "sweep", "bucketed", "ops"]
    assert sum(s.limit_s for s in stages) == G.BUDGET_S < 7 * 60
    by = {s.name: s.command for s in stages}
    # configs/wavlm_large_plus.yaml sets compile: true; the eager stages must override it
    assert "compile: true" in (ROOT / "configs" / "wavlm_large_plus.yaml").read_text()
    for name, compiled in (("eager", "false"), ("compiled", "true"), ("sweep", "false"),
                           ("bucketed", "true")):
        assert option_values(by[name], "--set")[-1] == f"model.compile={compiled}", name
        assert "configs/wavlm_large_plus.yaml" in by[name]
    assert "micro=2,8" in by["sweep"] and option_values(by["bucketed"], "--min-seconds") == ["2"]
    assert option_values(by["bucketed"], "--eval-steps") == ["3"]
    assert option_values(by["selftest_sdpa"], "--only") == ["sdpa"]
    assert [s.name for s in stages if s.uses_optimizer] == ["eager", "compiled", "sweep", "bucketed"]
    assert all(s.result_json is None or s.result_json.parent == tmp_path for s in stages)
    assert str(G.GPU_CACHE / "site") in by["wheels"]  # kept for a second call on a warm machine


def test_only_runs_the_chosen_stages_and_their_prerequisites(tmp_path):
    stages = G.plan(tmp_path, dry_run=True, cache=tmp_path)
    G.select(stages, ["compiled", "ops"])
    assert [s.name for s in stages if s.status == "pending"] == [
        "wheels", "prebuild_ops", "compiled", "ops"]
    assert all(s.last_lines == ["not selected (--only)"] for s in stages if s.status == "skipped")
    with pytest.raises(SystemExit, match="no such stage; stages: wheels"):
        G.select(stages, ["compile"])


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_fallback_to_torch_adam_when_the_prebuild_fails(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    seen = work / "argv.json"
    stages = [Stage("prebuild_ops", 20, py("print('nvcc fatal: no such arch'); raise SystemExit(3)")),
              Stage("eager", 20, py(f"import json, sys; json.dump(sys.argv, open({str(seen)!r}, 'w'))"),
                    uses_optimizer=True)]
    (work / "torch_extensions" / "fused_adam").mkdir(parents=True)
    (work / "torch_extensions" / "fused_adam" / "lock").touch()  # a build cut mid-way
    assert G.run_check(out, work, dry_run=True, stages=stages) == 1
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["torch_adam"] is True and "nvcc fatal: no such arch" in doc["torch_adam_reason"]
    assert json.loads(seen.read_text())[-1] == "--torch-adam"
    assert [(s["name"], s["status"], s["rc"]) for s in doc["stages"]] == [
        ("prebuild_ops", "failed", 3), ("eager", "ok", 0)]
    assert not (work / "torch_extensions" / "fused_adam" / "lock").exists()


def test_a_stage_past_its_limit_is_stopped_and_keeps_its_partial_figures(tmp_path):
    result = tmp_path / "rows.json"
    writes_then_hangs = py(f"""
        import json, time
        json.dump({{"rows": [{{"micro": 2}}]}}, open({str(result)!r}, "w"))
        print("row 1 written", flush=True)
        time.sleep(60)""")
    runner = Runner(tmp_path, {"check": "test"}, budget_s=60, env=None)
    stage = Stage("sweep", 3, writes_then_hangs, result)
    runner.stages = [stage, Stage("ops", 20, py("pass"))]
    runner.run(stage)
    assert stage.status == "timeout" and stage.seconds < 20
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert doc["stages"][0]["result"] == {"rows": [{"micro": 2}]}
    assert doc["stages"][0]["last_lines"] == ["row 1 written"]
    assert doc["stages"][1]["status"] == "pending"
    assert "row 1 written" in (tmp_path / "gpu_check.log").read_text()


def test_the_budget_skips_what_no_longer_fits(tmp_path):
    runner = Runner(tmp_path, {}, budget_s=1, env=None)
    stage = Stage("ops", 20, py("pass"))
    runner.stages = [stage]
    runner.run(stage)
    assert stage.status == "skipped" and "budget" in stage.last_lines[0]


def test_the_log_keeps_the_last_lines_of_a_stage_past_its_cap(tmp_path):
    log = CappedLog(tmp_path / "gpu_check.log", cap_bytes=1000, tail_lines=5)
    log.begin("chatty")
    for i in range(10_000):
        log.write_line(f"line {i}\n")
    log.end("chatty: ok")
    log.begin("next")
    log.write_line("after\n")
    text = (tmp_path / "gpu_check.log").read_text()
    assert len(text) < 1500 and "line 0\n" in text and "line 9999\n" in text
    assert "line 5000\n" not in text and re.search(r"\[\.\.\. \d+ lines cut", text)
    assert text.rstrip().endswith("after")


def test_wheel_list_equals_the_makefiles():
    make = (ROOT / "Makefile").read_text()
    listed = re.search(r"^GPU_WHEELS := (.*?)\n\S", make, re.S | re.M).group(1)
    assert set(listed.replace("\\", " ").split()) | {"deepspeed"} == set(W.WHEELS)
    assert not set(W.WHEELS) - {"deepspeed"} & W.IMAGE_PACKAGES - {"typing-extensions"}


def fake_wheels(folder: Path, names: list[str], size: int = 10) -> None:
    folder.mkdir(exist_ok=True)
    for name in names:
        with open(folder / name, "wb") as f:
            f.truncate(size)


def test_wheelhouse_check_size_versions_and_completeness(tmp_path):
    complete = [f"{d.replace('-', '_')}-1.0-py3-none-any.whl" for d in W.WHEELS]
    fake_wheels(tmp_path / "ok", complete)
    assert W.check(tmp_path / "ok") == []
    fake_wheels(tmp_path / "bad", complete[1:] + ["hjson-2.0-py3-none-any.whl"], size=7 << 20)
    problems = W.check(tmp_path / "bad")
    assert any("64 MiB" in p for p in problems)
    assert any(p.startswith("hjson: 2 versions") for p in problems)
    assert any(p == f"{complete[0].split('-')[0]}: no wheel" for p in problems)


def test_install_picks_the_missing_modules_and_their_companions(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "WHEELS", {"pydantic": "surely_not_importable_x", "numpy": "numpy",
                                      "typing-extensions": "typing_extensions", "hjson": "no_hjson_x"})
    fake_wheels(tmp_path, ["pydantic-2.0-py3-none-any.whl", "numpy-2.0-cp312-none-any.whl",
                           "typing_extensions-4.0-py3-none-any.whl"])
    install, absent = W.missing_wheels(tmp_path)
    assert [w.name for w in install] == ["pydantic-2.0-py3-none-any.whl",
                                         "typing_extensions-4.0-py3-none-any.whl"]
    assert absent == ["hjson"]
    assert W.install(tmp_path, tmp_path / "site") == 1  # names the fix instead of half-installing


def fake_cache(tmp_path: Path, ninja: str) -> Path:
    folder = tmp_path / "fused_adam"
    folder.mkdir(parents=True)
    (folder / "build.ninja").write_text(ninja)
    (folder / "fused_adam.so").touch()
    return tmp_path


CUDA_NINJA = "nvcc = /usr/local/cuda/bin/nvcc\ncuda_cflags = -gencode=arch=compute_80,code=sm_80\n"


def test_prebuilt_op_problem_per_device(tmp_path):
    assert "no prebuilt FusedAdam" in P.prebuilt_op_problem("cuda", (9, 0), tmp_path / "none")
    cpu = fake_cache(tmp_path / "cpu", "cxx = c++\n")
    assert P.prebuilt_op_problem("cpu", None, cpu) is None
    assert "CPU build" in P.prebuilt_op_problem("cuda", (8, 0), cpu)
    cuda = fake_cache(tmp_path / "cuda", CUDA_NINJA)
    assert P.prebuilt_op_problem("cuda", (8, 0), cuda) is None
    assert "no compute_90" in P.prebuilt_op_problem("cuda", (9, 0), cuda)
    assert "CUDA build" in P.prebuilt_op_problem("cpu", None, cuda)


def test_every_rank_that_would_jit_build_warns_with_the_command(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(fake_cache(tmp_path, "cxx = c++\n")))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    ds = {"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}
    message = P.warn_if_jit_build(torch.device("cuda", 3), ds, rank=11)
    assert message.startswith("rank 11: ") and "CPU build" in message
    assert "make ops" in message and "TORCH_CUDA_ARCH_LIST=9.0" in message
    assert message in caplog.text
    assert P.warn_if_jit_build(torch.device("cpu"), ds, rank=0) is None  # its op is there
    torch_adam = {"optimizer": {"type": "AdamW", "params": {"torch_adam": True}}}
    assert P.warn_if_jit_build(torch.device("cuda", 0), torch_adam, rank=0) is None


def test_prebuilt_arch_list_reaches_every_rank(tmp_path, monkeypatch):
    (tmp_path / P.MANIFEST).write_text(json.dumps({"accelerator": "cuda", "cuda_arch_list": "8.0;9.0"}))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "")  # recorded, so restored after the test
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    assert P.use_prebuilt_ops() == str(tmp_path)
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0"
    assert P.cuda_arch_list("8.0") == "8.0"


@pytest.mark.parametrize("name", G.OUT_FILES)
def test_out_file_names_come_back_from_the_device(name):
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name)


def test_the_check_restores_the_callers_sigterm_handler(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    G.run_check(tmp_path, tmp_path, dry_run=True, stages=[Stage("ops", 20, py("pass"))])
    assert signal.getsignal(signal.SIGTERM) is before

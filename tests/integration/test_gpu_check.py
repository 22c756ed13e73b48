"""tools/gpu_check.sh --dry-run: every stage of the GPU check at tiny sizes on CPU, and the
contract of what comes back from the device machine (at most 8 files of which the check
writes at most 4, 2 folders deep at most, names in [A-Za-z0-9._-]): gpu_check.json parses
with one entry per stage, also when the check is killed mid-stage; every module the check
and its stages import is in the GPU image or in the wheelhouse.

Also the one test of model.compile through the DeepSpeed engine (ZeRO-2, bf16, FusedAdam):
the `compiled` stage steps the real trainer step with compiled blocks."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from wavlm_ds.bench import gpu_check as G
from wavlm_ds.bench.wheelhouse import IMAGE_PACKAGES, WHEELS, normalize
from wavlm_ds.launch import ROOT, free_port

pytestmark = pytest.mark.slow
SCRIPT = ROOT / "tools" / "gpu_check.sh"
# every Python process of the check writes the top-level modules it imported at exit
RECORD_IMPORTS = """
import atexit, os, sys
def _record():
    if "IMPORT_RECORD_DIR" not in os.environ:
        return
    top = {m.split(".")[0] for m in list(sys.modules)}
    def where(module):
        return getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", [])), "")
    files = {m: where(sys.modules.get(m)) for m in top}
    with open(os.path.join(os.environ["IMPORT_RECORD_DIR"], f"{os.getpid()}.txt"), "w") as f:
        f.write("\\n".join(f"{m}\\t{files[m]}" for m in sorted(top)))
atexit.register(_record)
"""
EDITABLE = re.compile(r"__editable__")  # the editable install's finder: the project


def check_env(tmp_path: Path) -> dict[str, str]:
    hook = tmp_path / "hook"
    (hook / "imports").mkdir(parents=True)
    (hook / "sitecustomize.py").write_text(RECORD_IMPORTS)
    path = os.pathsep.join([str(hook)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return dict(os.environ, PYTHON=sys.executable, MASTER_PORT=str(free_port()),
                PYTHONPATH=path, IMPORT_RECORD_DIR=str(hook / "imports"))


def assert_out_contract(out: Path) -> dict:
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 4, files
    for p in out.rglob("*"):
        rel = p.relative_to(out)
        assert len(rel.parts) <= 3, rel  # OUT/a/b/file at most
        assert all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in rel.parts), rel
    assert {p.name for p in files} <= set(G.OUT_FILES)
    doc = json.loads((out / "gpu_check.json").read_text())
    assert [s["name"] for s in doc["stages"]] == list(G.STAGES)
    return doc


def not_in_gpu_image(imported: dict[str, str]) -> set[str]:
    """Of {module: its file}, those that neither the standard library, the project, code
    made at run time (no file: inductor's kernels, torch.distributed's templates, Cython's
    runtime), nor a package of the GPU image or the wheelhouse provides. A module under
    site-packages belongs to the top folder it lies in (setuptools' vendored jaraco belongs
    to setuptools)."""
    dists = packages_distributions()
    allowed = IMAGE_PACKAGES | set(WHEELS)
    missing = set()
    for module, file in imported.items():
        parts = Path(file).parts
        if module in sys.stdlib_module_names or EDITABLE.match(module) \
                or "site-packages" not in parts:  # stdlib, the repo, or made at run time
            continue
        top = Path(parts[parts.index("site-packages") + 1]).stem.split(".")[0]
        if not {normalize(d) for d in dists.get(top, [])} & allowed:
            missing.add(f"{module} ({file})")
    return missing


def test_dry_run_contract_and_imports(tmp_path):
    out, env = tmp_path / "out", check_env(tmp_path)
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT), str(out), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1500)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    doc = assert_out_contract(out)
    print(f"dry run: {seconds:.0f} s")
    assert doc["status"] == "done" and doc["torch_adam"] is False
    assert all(s["status"] == "ok" for s in doc["stages"]), [(s["name"], s["status"]) for s in doc["stages"]]
    result = {s["name"]: s["result"] for s in doc["stages"]}
    assert result["selftest_sdpa"]["ok"] and result["selftest_sdpa"]["enabled"] == {}
    eager, compiled = result["eager"]["rows"][0], result["compiled"]["rows"][0]
    # the recipe YAML says compile: true; the eager stage really runs eager
    assert (eager["compile"], eager["attention_impl"]) == (False, "blocked")
    assert (compiled["compile"], compiled["attention_impl"]) == (True, "sdpa")
    assert all(r["flop_counter_ratio"] == pytest.approx(1, abs=1e-3) for r in (eager, compiled))
    assert [r["micro"] for r in result["sweep"]["rows"]] == [1, 2]
    bucketed = result["bucketed"]["rows"][0]
    assert bucketed["lengths"] == "uniform" and bucketed["eval_micro_s"] > 0
    assert "mask" in result["ops"]
    assert doc["summary"]["compiled"]["first_step_s"] > doc["summary"]["compiled"]["step_s"]
    log = (out / "gpu_check.log").read_text()
    assert all(f"===== {name}:" in log for name in G.STAGES)
    imported = {}
    for f in (tmp_path / "hook" / "imports").glob("*.txt"):
        imported.update(line.split("\t") for line in f.read_text().splitlines())
    assert {"deepspeed", "torch", "wavlm_ds"} <= set(imported)
    assert not_in_gpu_image(imported) == set()


def test_sigterm_mid_stage_leaves_the_finished_stages(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(["bash", str(SCRIPT), str(out), "--dry-run"], cwd=ROOT,
                            env=check_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    summary, deadline = out / "gpu_check.json", time.monotonic() + 600
    try:
        while time.monotonic() < deadline:  # kill while selftest_sdpa (3rd) or later runs
            time.sleep(0.5)
            stages = json.loads(summary.read_text())["stages"] if summary.exists() else []
            if sum(s["status"] == "ok" for s in stages) >= 2 and \
                    any(s["status"] == "running" for s in stages):
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
    finally:
        proc.kill()
    doc = assert_out_contract(out)
    statuses = [s["status"] for s in doc["stages"]]
    assert doc["status"] == "killed"
    assert statuses[:2] == ["ok", "ok"] and "killed" in statuses
    killed = statuses.index("killed")
    assert all(s == "ok" for s in statuses[:killed])
    assert all(s == "skipped" for s in statuses[killed + 1:])

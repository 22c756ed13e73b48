"""Build and run `deepspeed` launcher commands for train.py (demo, benchmarks, tests).

The same command line users type on a cluster, pointed at hostfiles/localhost: the
launcher starts one process per slot, passes --local_rank, and on CPU DeepSpeed uses its
CPU accelerator with gloo.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def launcher_env(extra: dict[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment with `extra` applied (a None value unsets the name)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # one thread per rank: 2 ranks on 2 cores
    # TORCH_EXTENSIONS_DIR: train.py defaults it to the venv's prebuilt cache itself.
    for name, value in (extra or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def free_port() -> int:
    """A free TCP port on loopback for the rendezvous (runs on one machine never collide)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(config: str | Path, ds_config: str | Path, run_dir: str | Path,
                  overrides: list[str] = (), resume: str = "auto",
                  hostfile: str | Path = ROOT / "hostfiles" / "localhost",
                  launcher_args: list[str] = ()) -> list[str]:
    deepspeed = Path(sys.executable).with_name("deepspeed")
    cmd = [str(deepspeed), "--hostfile", str(hostfile), "--no_ssh_check",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *launcher_args,
           str(ROOT / "train.py"),
           "--config", str(config), "--deepspeed_config", str(ds_config),
           "--run-dir", str(run_dir), "--resume", resume]
    for item in overrides:
        cmd += ["--set", item]
    return cmd


def run_training(cmd: list[str], log_path: Path, env: dict[str, str] | None = None,
                 timeout_s: float | None = None, progress: Callable[[], None] | None = None,
                 poll_s: float = 5.0) -> int:
    """Run a launcher command with output to `log_path`; return the exit code.

    progress: called every `poll_s` seconds while it runs (e.g. a `ProgressPrinter`), so the
    console shows the run while every rank's output still goes to the log file only.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=launcher_env(env))
        while True:
            try:
                code = proc.wait(timeout=poll_s)
                break
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    raise subprocess.TimeoutExpired(cmd, timeout_s)
                if progress is not None:
                    progress()
    if progress is not None:
        progress()
    return code


class ProgressPrinter:
    """Prints rank 0's progress (step, loss, lr, s/step, ETA; validation losses) from the
    run's metrics.jsonl, one line per new report, without touching the run."""

    def __init__(self, metrics_path: Path, total_steps: int, tag: str = "[train]") -> None:
        self.path, self.total, self.tag = Path(metrics_path), total_steps, tag
        self.offset, self.first = 0, None  # (wall time, step) of the first step seen

    def __call__(self) -> None:
        if not self.path.is_file():
            return
        with open(self.path) as f:
            f.seek(self.offset)
            lines = f.readlines()
        if lines and not lines[-1].endswith("\n"):  # a line being written: read it next time
            lines.pop()
        self.offset += sum(len(line) for line in lines)
        rows = [json.loads(line) for line in lines]
        for row in (r for r in rows if r["split"] == "valid"):
            print(f"{self.tag} step {row['step']} validation loss {row['loss']:.4f} "
                  f"(predict-zero {row.get('baseline_zero', float('nan')):.4f}, span "
                  f"interpolation {row.get('baseline_interp', float('nan')):.4f}; of the "
                  f"input {row.get('baseline_interp_input', float('nan')):.4f})", flush=True)
        train = [r for r in rows if r["split"] == "train"]
        if train:
            self.report(train[-1])

    def report(self, row: dict) -> None:
        now, step = time.monotonic(), row["step"]
        if self.first is None:
            self.first = (now, step)
        t0, s0 = self.first
        rate = (now - t0) / (step - s0) if step > s0 else row["step_time_s"]
        eta = max(0.0, (self.total - step) * rate)
        print(f"{self.tag} step {step}/{self.total}  loss {row['loss']:.4f}  lr {row['lr']:.2e}  "
              f"{rate:.2f} s/step  ETA {int(eta // 60)} min {int(eta % 60):02d} s", flush=True)

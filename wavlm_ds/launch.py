"""Build and run `deepspeed` launcher commands for train.py (demo, benchmarks, tests).

The same command line users type on a cluster, pointed at hostfiles/localhost: the
launcher starts one process per slot, passes --local_rank, and on CPU DeepSpeed uses its
CPU accelerator with gloo.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def launcher_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # one thread per rank: 2 ranks on 2 cores
    # TORCH_EXTENSIONS_DIR: train.py defaults it to the venv's prebuilt cache itself.
    env.update(extra or {})
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
                 timeout_s: float | None = None) -> int:
    """Run a launcher command with output to `log_path`; return the exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                              env=launcher_env(env), timeout=timeout_s)
    return proc.returncode

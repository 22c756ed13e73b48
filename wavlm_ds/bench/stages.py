"""Run the GPU check's stages and keep its two result files valid at every moment.

Each stage is a subprocess in its own session, under its own time limit (and the check's
overall deadline). Its output streams into one log (`CappedLog`: a stage that prints past
`cap_bytes` keeps its first and last lines); its own JSON (written by the stage into the
work folder, rewritten as it goes) is merged into the summary, which `Runner.write` rewrites
atomically after every stage and every few seconds while one runs. A SIGTERM to the driver
stops the running stage, marks it and the rest, writes the summary and exits 143: a check
killed at any point leaves a valid summary with every stage that finished.

Standard library only: this runs before the GPU machine has the wheels it lacks.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from wavlm_ds.jsonio import write_json_atomic

POLL_S = 2.0  # how often a running stage's JSON is merged into the summary
KILL_GRACE_S = 5.0  # SIGTERM, then SIGKILL, for a stage past its limit


class Terminated(Exception):
    """The driver received SIGTERM."""


@dataclasses.dataclass
class Stage:
    """One step of the check. `result_json`: the file the stage writes its figures to (in
    the work folder), merged into the summary; `uses_optimizer`: a benchmark, given
    `--torch-adam` once the FusedAdam build has failed."""
    name: str
    limit_s: int
    command: list[str]
    result_json: Path | None = None
    uses_optimizer: bool = False
    status: str = "pending"  # running, ok, failed, timeout, killed, skipped
    rc: int | None = None
    seconds: float | None = None
    result: dict | None = None
    last_lines: list[str] = dataclasses.field(default_factory=list)

    def entry(self) -> dict:
        out = {"name": self.name, "status": self.status, "limit_s": self.limit_s,
               "seconds": self.seconds, "rc": self.rc, "command": " ".join(self.command),
               "result": self.result}
        if self.status not in ("ok", "pending"):
            out["last_lines"] = self.last_lines
        return out

    def load_result(self) -> None:
        if self.result_json is None or not self.result_json.is_file():
            return
        try:
            self.result = json.loads(self.result_json.read_text())
        except (OSError, ValueError):  # the stage writes atomically; keep the last good one
            pass


class CappedLog:
    """One log for every stage. A stage's output past `cap_bytes` is not written as it
    comes: its last `tail_lines` lines are kept and written when the stage ends, after a
    line that says how much was cut."""

    def __init__(self, path: Path, cap_bytes: int = 2 << 20, tail_lines: int = 500) -> None:
        self.path, self.cap, self.tail_lines = path, cap_bytes, tail_lines
        self.file = open(path, "w", encoding="utf-8", errors="replace")
        self.lock = threading.Lock()
        self.begin("gpu_check")

    def begin(self, name: str) -> None:
        self.written = 0
        self.cut = 0
        self.tail: collections.deque[str] = collections.deque(maxlen=self.tail_lines)
        self.write_line(f"===== {name} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n")

    def write_line(self, line: str) -> None:
        with self.lock:
            if self.written + len(line) <= self.cap:
                self.file.write(line)
                self.file.flush()
                self.written += len(line)
            else:
                if len(self.tail) == self.tail.maxlen:
                    self.cut += 1
                self.tail.append(line)

    def end(self, summary: str) -> None:
        with self.lock:
            if self.cut:
                self.file.write(f"[... {self.cut} lines cut: past {self.cap >> 20} MiB ...]\n")
            self.file.writelines(self.tail)
            self.file.write(f"===== {summary}\n")
            self.file.flush()
            self.tail.clear()


class Runner:
    """Runs stages in order against a deadline; owns the summary file and the log."""

    def __init__(self, out_dir: Path, header: dict, budget_s: float, env: dict[str, str]) -> None:
        self.summary_path = out_dir / "gpu_check.json"
        self.log = CappedLog(out_dir / "gpu_check.log")
        self.header, self.env = header, env
        self.stages: list[Stage] = []
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget_s
        self.extra: Callable[[], dict] = dict

    def write(self, status: str = "running") -> None:
        doc = {**self.header, "status": status,
               "elapsed_s": round(time.monotonic() - self.t0, 1), **self.extra(),
               "stages": [s.entry() for s in self.stages]}
        write_json_atomic(self.summary_path, doc)

    def run(self, stage: Stage, extra_args: list[str] = ()) -> Stage:
        """Run one stage to its end, its limit, the deadline, or a SIGTERM (re-raised)."""
        limit = min(stage.limit_s, self.deadline - time.monotonic())
        if limit < 3:
            stage.status = "skipped"
            stage.last_lines = ["skipped: the check's time budget is spent"]
            self.write()
            return stage
        command = stage.command + list(extra_args)
        stage.command, stage.status = command, "running"
        self.log.begin(f"{stage.name}: {' '.join(command)}")
        self.write()
        start = time.monotonic()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=self.env, start_new_session=True, text=True,
                                errors="replace")
        tail: collections.deque[str] = collections.deque(maxlen=12)
        reader = threading.Thread(target=self._pump, args=(proc, tail), daemon=True)
        reader.start()
        try:
            stage.status = self._wait(stage, proc, start + limit)
        except Terminated:
            self._stop(proc)
            stage.status = "killed"
            raise
        finally:
            reader.join(timeout=5)
            stage.rc, stage.seconds = proc.returncode, round(time.monotonic() - start, 1)
            stage.last_lines = [line.rstrip("\n")[-300:] for line in tail]
            stage.load_result()
            self.log.end(f"{stage.name}: {stage.status} (rc {stage.rc}, {stage.seconds} s)")
            self.write()
        return stage

    def _pump(self, proc: subprocess.Popen, tail: collections.deque) -> None:
        for line in proc.stdout:
            self.log.write_line(line)
            tail.append(line)

    def _wait(self, stage: Stage, proc: subprocess.Popen, end: float) -> str:
        mtime = None
        while True:
            try:
                proc.wait(timeout=min(POLL_S, max(end - time.monotonic(), 0.01)))
                return "ok" if proc.returncode == 0 else "failed"
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() >= end:
                self._stop(proc)
                return "timeout"
            if stage.result_json is not None and stage.result_json.is_file():
                now = stage.result_json.stat().st_mtime
                if now != mtime:  # the stage wrote new figures: merge them now
                    mtime = now
                    stage.load_result()
                    self.write()

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        """SIGTERM to the stage's whole session (its workers too), SIGKILL after a grace."""
        for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within: SIGTERM raises `Terminated` in the main thread (the runner cleans up on it),
    once, so that the clean-up is not interrupted; the previous handler is restored after."""
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

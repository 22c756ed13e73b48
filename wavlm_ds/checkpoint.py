"""Crash-safe DeepSpeed checkpoints with per-rank trainer state and safe loading.

Layout of one checkpoint (`<root>/<tag>/`): DeepSpeed's own files, one
`trainer_state_rank{r}.pt` per rank (data position, RNG states: DeepSpeed's `client_state`
is written by data-parallel rank 0 only and read by every rank, so it cannot carry them),
and `manifest.json` (every file with size and sha256, each hashed once by the rank that wrote
it), committed by rank 0 only after every rank reported success. On resume rank 0 alone
verifies the chosen checkpoint's sha256s and broadcasts the tag (agree_on_resume). `latest` (for DeepSpeed's tools) is replaced atomically after
the manifest. `--resume auto` loads the newest checkpoint whose manifest verifies, so a crash
at any point of a save loses at most that save.

Every file is loaded with `weights_only=True` inside `torch.serialization.safe_globals`
listing the exact DeepSpeed classes its optimizer states need (DeepSpeed's own loader uses
`weights_only=False`); a file with any other pickled global is refused.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

from wavlm_ds.data.index import sha256_file
from wavlm_ds.faults import fault_point

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST = "latest"
TAG_RE = re.compile(r"^step(\d{8})$")


class CheckpointError(RuntimeError):
    pass


def _safe_globals() -> list:
    """The exact non-tensor globals DeepSpeed's bf16 ZeRO-1/2 checkpoints contain."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [LossScaler, ZeroStageEnum, fragment_address]


def safe_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """torch.load that never executes pickled code beyond the allow-listed classes."""
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # pickle.UnpicklingError and friends
        raise CheckpointError(f"{path}: refused to load (weights_only=True): {err}") from err


class SafeCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed checkpoint engine: safe loads; remembers the files this rank wrote."""

    def __init__(self, config_params: Any = None, rank: int = 0) -> None:
        super().__init__(config_params)
        self.rank = rank
        self.written: list[str] = []

    def save(self, state_dict: Any, path: str) -> None:
        super().save(state_dict, path)
        self.written.append(path)
        if len(self.written) == 1:
            fault_point("after_first_file", self.rank)

    def load(self, path: str, map_location: Any = None) -> Any:
        return safe_load(path, map_location=map_location)


def _fsync_write(path: Path, data: bytes) -> None:
    """Write atomically: temp file in the same directory, fsync, rename, fsync the dir."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def tag_for_step(step: int) -> str:
    return f"step{step:08d}"


def trainer_state_name(rank: int) -> str:
    return f"trainer_state_rank{rank:05d}.pt"


def verify_checkpoint(ckpt_dir: Path, full: bool = True) -> str | None:
    """None if `ckpt_dir` is complete (manifest present, files match), else the problem."""
    manifest_path = ckpt_dir / MANIFEST
    if not manifest_path.is_file():
        return f"{ckpt_dir}: no {MANIFEST} (save did not complete)"
    try:
        manifest = json.loads(manifest_path.read_text())
        entries = manifest["files"]
    except (json.JSONDecodeError, KeyError) as err:
        return f"{manifest_path}: unreadable manifest ({err})"
    for entry in entries:
        path = ckpt_dir / entry["file"]
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            return f"{path}: missing or wrong size (manifest says {entry['bytes']} bytes)"
        if full and sha256_file(path) != entry["sha256"]:
            return f"{path}: sha256 mismatch with {MANIFEST}"
    return None


class CheckpointManager:
    """Save/keep/find/load checkpoints under `root` for one rank of the job."""

    def __init__(self, root: Path, rank: int, world_size: int, keep_last: int) -> None:
        self.root = Path(root)
        self.rank = rank
        self.world_size = world_size
        self.keep_last = keep_last

    # ---- saving ---------------------------------------------------------------------

    def save(self, engine: Any, step: int, trainer_state: dict, client_state: dict) -> Path:
        """Collective: every rank calls it. Raises CheckpointError on every rank if any failed."""
        tag = tag_for_step(step)
        ckpt_dir = self.root / tag
        ckpt_engine: SafeCheckpointEngine = engine.checkpoint_engine
        ckpt_engine.written = []
        error = None
        try:
            engine.save_checkpoint(str(self.root), tag=tag, client_state=client_state,
                                   save_latest=False)
        except Exception as err:  # e.g. ENOSPC while writing a shard
            error = err
            dist.barrier()  # match the barrier the other ranks wait at inside DeepSpeed's save
        fault_point("after_all_shards", self.rank)
        if error is None:
            error = self._write_trainer_state(ckpt_dir, trainer_state)
        entries = self._hash_own_files(ckpt_dir, ckpt_engine.written) if error is None else None
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, {"error": repr(error) if error else None, "files": entries})
        failures = [f"rank {r}: {g['error']}" for r, g in enumerate(gathered) if g["error"]]
        if failures:
            if self.rank == 0 and not (ckpt_dir / MANIFEST).exists():
                shutil.rmtree(ckpt_dir, ignore_errors=True)  # free the space it took
            free = shutil.disk_usage(self.root).free / 2**20  # torch hides ENOSPC in its errors
            raise CheckpointError(f"checkpoint {ckpt_dir} failed, previous checkpoint kept "
                                  f"({free:.1f} MiB free on {self.root}): " + "; ".join(failures))
        if self.rank == 0:
            self._commit(ckpt_dir, [e for g in gathered for e in g["files"]], step)
        dist.barrier()
        return ckpt_dir

    def _write_trainer_state(self, ckpt_dir: Path, state: dict) -> Exception | None:
        try:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            _fsync_write(ckpt_dir / trainer_state_name(self.rank), buffer.getvalue())
            return None
        except Exception as err:
            return err

    def _hash_own_files(self, ckpt_dir: Path, written: list[str]) -> list[dict]:
        paths = [Path(p) for p in written] + [ckpt_dir / trainer_state_name(self.rank)]
        return [{"file": str(p.relative_to(ckpt_dir)), "bytes": p.stat().st_size,
                 "sha256": sha256_file(p)} for p in paths]

    def _commit(self, ckpt_dir: Path, entries: list[dict], step: int) -> None:
        fault_point("before_manifest", 0)
        manifest = {"step": step, "world_size": self.world_size,
                    "files": sorted(entries, key=lambda e: e["file"])}
        _fsync_write(ckpt_dir / MANIFEST, json.dumps(manifest, indent=1).encode())
        fault_point("after_manifest", 0)
        fault_point("before_latest", 0)
        _fsync_write(self.root / LATEST, ckpt_dir.name.encode())
        fault_point("after_latest", 0)
        self._prune()

    def _prune(self) -> None:
        """Keep the newest `keep_last` complete checkpoints; drop older dirs of any kind."""
        tags = sorted(self._tags(), reverse=True)
        complete = [t for t in tags if (self.root / t / MANIFEST).is_file()]
        keep = set(complete[: self.keep_last])
        oldest_kept = min(keep) if keep else None
        for tag in tags:
            if tag not in keep and oldest_kept is not None and tag < oldest_kept:
                shutil.rmtree(self.root / tag, ignore_errors=True)

    # ---- finding and loading ----------------------------------------------------------

    def _tags(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [p.name for p in self.root.iterdir() if p.is_dir() and TAG_RE.match(p.name)]

    def find_latest_valid(self, verify: bool = True) -> str | None:
        """The newest complete checkpoint. A manifest is written only after every rank
        saved, so it marks completeness even when a crash left `latest` one save behind;
        with verify, every file's size and sha256 are checked too."""
        for tag in sorted(self._tags(), reverse=True):
            problem = verify_checkpoint(self.root / tag, full=verify)
            if problem is None:
                return tag
            log.warning("skipping checkpoint %s: %s", tag, problem)
        return None

    def load(self, engine: Any, tag: str) -> dict:
        """Load engine + this rank's trainer state from `tag`. Checks the files' sizes only:
        the sha256 check is done once, by whoever chose the tag (find_latest_valid or
        resolve_resume, on rank 0: agree_on_resume)."""
        ckpt_dir = self.root / tag
        problem = verify_checkpoint(ckpt_dir, full=False)
        if problem is not None:
            raise CheckpointError(f"cannot resume from {ckpt_dir}: {problem}")
        manifest = json.loads((ckpt_dir / MANIFEST).read_text())
        if manifest["world_size"] != self.world_size:
            raise CheckpointError(
                f"{ckpt_dir} was written by {manifest['world_size']} ranks, this job has "
                f"{self.world_size}; convert it with `python tools/export.py universal "
                f"{ckpt_dir}` and resume from the universal checkpoint (see README)")
        path, _ = engine.load_checkpoint(str(self.root), tag=tag, load_optimizer_states=True,
                                         load_lr_scheduler_states=True)
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load {ckpt_dir}")
        replay_cpu_adam_powers(engine)
        return safe_load(ckpt_dir / trainer_state_name(self.rank))


UNIVERSAL_STATE = "trainer_state.json"  # written last by `tools/export.py universal`


def replay_cpu_adam_powers(engine: Any) -> int:
    """Make the first optimizer step after a resume bitwise equal to an uninterrupted run's.

    DeepSpeed's CPU FusedAdam kernel (csrc/cpu/adam) keeps beta1^t and beta2^t in C++ state,
    updated by one float multiplication per step, but recomputes them with `pow` when the
    step it is given is not the previous one plus one, as after a restart: the bias
    corrections then differ by an ulp and the runs drift apart at ~1e-7. Replaying the step
    counter 1..t on a one-element dummy tensor rebuilds the same products (~5 us a step).
    The CUDA kernel computes `pow` every step and needs nothing. Returns the steps replayed.
    """
    from deepspeed.accelerator import get_accelerator
    from deepspeed.ops.adam import FusedAdam

    base = getattr(engine.optimizer, "optimizer", engine.optimizer)
    if not isinstance(base, FusedAdam) or get_accelerator().device_name() != "cpu":
        return 0
    steps = {int(s["step"]) for s in base.state.values() if "step" in s}
    if len(steps) != 1:  # no state yet, or groups out of step: nothing safe to replay
        return 0
    last = steps.pop()
    group = base.param_groups[0]
    beta1, beta2 = group["betas"]
    dummy = [[torch.zeros(1)] for _ in range(4)]  # grad, param, exp_avg, exp_avg_sq
    flag = torch.zeros(1, dtype=torch.int)
    for step in range(1, last + 1):
        base.multi_tensor_adam(1, flag, dummy, 0.0, beta1, beta2, group["eps"], step,
                               int(base.adam_w_mode), 1, 0.0)
    return last


def is_universal(path: Path) -> bool:
    return (path / "zero").is_dir()


def load_universal(engine: Any, path: Path) -> dict:
    """Resume from a universal checkpoint on any world size.

    Data-position policy: per-rank positions do not map onto a new rank/worker split, so
    the interrupted epoch restarts from its beginning with the new split (samples already
    seen in that epoch are seen again: at most one epoch); step count, lr schedule and
    optimizer state continue exactly.
    """
    marker = path / UNIVERSAL_STATE
    if not marker.is_file():
        raise CheckpointError(f"{path}: no {UNIVERSAL_STATE}; the conversion did not finish, "
                              "run `python tools/export.py universal` again")
    info = json.loads(marker.read_text())
    loaded, _ = engine.load_checkpoint(str(path.parent), tag=path.name,
                                       load_optimizer_states=True, load_lr_scheduler_states=True)
    if loaded is None:
        raise CheckpointError(f"DeepSpeed could not load the universal checkpoint {path}")
    replay_cpu_adam_powers(engine)
    return {"step": info["step"], "consecutive_skips": 0, "skipped_total": info["skipped_total"],
            "data": {"epoch": info["epoch"], "batches_consumed": 0}}


def resolve_resume(mode: str, root: Path) -> tuple[Path, str | None]:
    """Map --resume {auto,never,PATH} to (checkpoint root, tag or None), the checkpoint
    verified in full (sizes and sha256). Never silent."""
    if mode == "never":
        return root, None
    if mode == "auto":
        tag = CheckpointManager(root, 0, 1, 1).find_latest_valid()
        # INFO either way: a first run has no checkpoint, and that is not trouble
        log.info("--resume auto: %s", f"resuming from {root / tag}" if tag
                 else f"no complete checkpoint under {root}, starting fresh")
        return root, tag
    path = Path(mode)
    if not path.exists():
        raise CheckpointError(f"--resume {mode}: no such checkpoint; use --resume auto to "
                              "start fresh when none exists")
    if is_universal(path):
        return path.parent, path.name
    if TAG_RE.match(path.name):
        problem = verify_checkpoint(path)
        if problem is not None:
            raise CheckpointError(f"--resume {mode}: cannot resume: {problem}")
        return path.parent, path.name
    tag = CheckpointManager(path, 0, 1, 1).find_latest_valid()
    if tag is None:
        raise CheckpointError(f"--resume {mode}: no complete checkpoint in that directory")
    return path, tag


def agree_on_resume(mode: str, root: Path, rank: int) -> tuple[Path, str | None]:
    """Collective: rank 0 alone resolves --resume and verifies the chosen checkpoint in full
    (every file's size and sha256, read once), then broadcasts the choice (or its error) so
    that every rank loads the same tag; the others check file sizes only (in load).

    Bytes read from the checkpoint filesystem per resume: its size once for the hashes,
    plus what DeepSpeed loads on every rank (the model states on each, one optimizer shard
    each), instead of twice its size on every rank."""
    choice: list = [None]
    if rank == 0:
        try:
            found_root, tag = resolve_resume(mode, root)
            choice = [{"root": str(found_root), "tag": tag, "error": None}]
        except CheckpointError as err:
            choice = [{"root": None, "tag": None, "error": str(err)}]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(choice, src=0)
    if choice[0]["error"]:
        raise CheckpointError(choice[0]["error"])
    return Path(choice[0]["root"]), choice[0]["tag"]


@contextlib.contextmanager
def forced_safe_loads():
    """Make every torch.load inside (e.g. DeepSpeed's zero_to_fp32, ds_to_universal) safe.

    Those DeepSpeed tools call torch.load(..., weights_only=False) themselves; within this
    context the flag is overridden to True with our allow-list, so a malicious file is
    refused there too.
    """
    original = torch.load

    def guarded(f, map_location=None, **kwargs):
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals(_safe_globals()):
            return original(f, map_location=map_location, **kwargs)

    torch.load = guarded
    try:
        yield
    finally:
        torch.load = original

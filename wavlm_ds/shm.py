"""DeepSpeed's CPU shared-memory all-reduce buffers: release ours at exit, sweep orphans.

On the CPU accelerator, DeepSpeed's comm backend creates one /dev/shm file per rank,
`deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>` (66 MiB), maps it,
and never unlinks it. /dev/shm is RAM: every CPU run leaks 66 MiB per rank, for good (seen
here: 21 GiB after a day of test runs, until the C++ compiler of `make ops` was OOM-killed).

`release_at_exit()` unlinks this process's buffer when it exits (peers keep their mappings;
an unlinked file lives until the last one is unmapped). A rank killed with SIGKILL cannot
clean up, so `sweep()` removes buffers that no live process maps and that are older than a
minute (a starting job creates and maps its file at once): `train.py` runs it on local rank
0 before start-up, `make ops` and the test session run it too. CUDA runs create no such
files; both functions are then no-ops.
"""
from __future__ import annotations

import atexit
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)
SHM_DIR = Path("/dev/shm")
PREFIX = "deepspeed_allreduce_buffer_"
_registered: set[Path] = set()


def own_buffer() -> Path | None:
    """The buffer DeepSpeed names for this process (from the launcher's environment)."""
    addr, port, rank = (os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK"))
    if addr is None or port is None:
        return None
    return SHM_DIR / f"{PREFIX}{os.getuid()}_{addr}_{port}_{rank or 0}"


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def release_at_exit() -> None:
    """Unlink this process's buffer at interpreter exit (idempotent; call after init)."""
    path = own_buffer()
    if path is None or path in _registered:
        return
    _registered.add(path)
    atexit.register(_unlink, path)


def mapped_buffers() -> set[str]:
    """Names of the buffers some live process maps (from /proc/<pid>/maps)."""
    names: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:  # the process exited, or is not ours to read
            continue
        for line in text.splitlines():
            at = line.find(str(SHM_DIR / PREFIX))
            if at >= 0:
                names.add(Path(line[at:].split(" (deleted)")[0]).name)
    return names


def sweep(min_age_s: float = 60.0) -> tuple[int, int]:
    """Remove orphaned buffers: (files removed, bytes freed)."""
    if not SHM_DIR.is_dir():
        return 0, 0
    candidates = list(SHM_DIR.glob(PREFIX + "*"))
    if not candidates:
        return 0, 0
    live, now = mapped_buffers(), time.time()
    removed = freed = 0
    for path in candidates:
        try:
            st = path.stat()
        except OSError:
            continue
        if path.name in live or now - st.st_mtime < min_age_s:
            continue
        _unlink(path)
        removed, freed = removed + 1, freed + st.st_size
    if removed:
        log.info("removed %d orphaned DeepSpeed shm buffers from %s (%.0f MiB)", removed,
                 SHM_DIR, freed / 2**20)
    return removed, freed

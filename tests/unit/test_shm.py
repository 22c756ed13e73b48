"""wavlm_ds.shm: orphaned DeepSpeed all-reduce buffers are swept, live or fresh ones kept."""
from __future__ import annotations

import mmap
import os
import subprocess
import sys
import time
import uuid

import pytest

from wavlm_ds import shm

pytestmark = pytest.mark.skipif(not shm.SHM_DIR.is_dir(), reason="no /dev/shm")


def fake_buffer(age_s: float) -> "os.PathLike":
    path = shm.SHM_DIR / f"{shm.PREFIX}{os.getuid()}_test{uuid.uuid4().hex}_1_0"
    path.write_bytes(b"\0" * 4096)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_sweep_removes_orphans_keeps_mapped_and_fresh():
    orphan, fresh, mapped = fake_buffer(3600), fake_buffer(0), fake_buffer(3600)
    with open(mapped, "r+b") as f, mmap.mmap(f.fileno(), 4096) as view:
        removed, freed = shm.sweep(min_age_s=60)
        assert view[0] == 0
        assert not orphan.exists()
        assert fresh.exists() and mapped.exists()  # a starting job's, a live job's
        assert removed >= 1 and freed >= 4096
    fresh.unlink()
    shm.sweep(min_age_s=60)
    assert not mapped.exists()  # unmapped now: an orphan


def test_release_at_exit_unlinks_own_buffer():
    port = f"test{uuid.uuid4().hex[:8]}"
    path = shm.SHM_DIR / f"{shm.PREFIX}{os.getuid()}_127.0.0.9_{port}_3"
    code = ("from pathlib import Path; from wavlm_ds import shm; "
            f"Path({str(path)!r}).write_bytes(b'x'); shm.release_at_exit(); "
            "assert shm.own_buffer().exists()")
    env = dict(os.environ, MASTER_ADDR="127.0.0.9", MASTER_PORT=port, RANK="3")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert not path.exists()

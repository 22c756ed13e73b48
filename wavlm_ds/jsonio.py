"""Atomic JSON writes: a reader (or a kill at any moment) sees the old file or the new one,
never half of one. Standard library only: the GPU check's driver imports it before any
wheel is installed."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_json_atomic(path: Path | str, obj: object) -> Path:
    """Write `obj` as indented JSON to `path` through a temp file in the same folder and a
    rename (atomic on POSIX). The temp name uses only letters, digits and dots."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)
    return path

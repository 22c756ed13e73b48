"""Prebuild DeepSpeed's JIT ops (FusedAdam and the comm op) into the venv's cache.

Run once per image/venv (`make ops`) so that 128 ranks never JIT-compile into one shared
cache at start-up. Uses whatever accelerator DeepSpeed detects (CUDA or CPU). The cache is
`<venv>/torch_extensions` (`PREBUILT_DIR`) unless TORCH_EXTENSIONS_DIR says otherwise;
`use_prebuilt_ops()`, called by train.py and the tools before DeepSpeed is imported, points
an unset TORCH_EXTENSIONS_DIR there, so a plain `deepspeed --hostfile ... train.py` on every
node loads the prebuilt ops instead of compiling into ~/.cache/torch_extensions.

usage: python -m wavlm_ds.prebuild_ops
"""
from __future__ import annotations

import os
import sys
import time

OPS = ("FusedAdamBuilder", "ShareMemCommBuilder")
PREBUILT_DIR = os.path.join(sys.prefix, "torch_extensions")


def use_prebuilt_ops() -> str:
    """Default TORCH_EXTENSIONS_DIR to the venv's prebuilt cache; return the one in use."""
    return os.environ.setdefault("TORCH_EXTENSIONS_DIR", PREBUILT_DIR)


def main() -> int:
    use_prebuilt_ops()
    from deepspeed.accelerator import get_accelerator

    from wavlm_ds import shm

    removed, freed = shm.sweep()  # orphaned CPU all-reduce buffers hold RAM the compiler needs
    if removed:
        print(f"removed {removed} orphaned DeepSpeed shm buffers ({freed / 2**20:.0f} MiB)")
    accel = get_accelerator()
    print(f"accelerator={accel.device_name()} "
          f"TORCH_EXTENSIONS_DIR={os.environ['TORCH_EXTENSIONS_DIR']}")
    for name in OPS:
        builder = accel.create_op_builder(name)
        if builder is None or not builder.is_compatible():
            print(f"  {name}: not available on {accel.device_name()}, skipped")
            continue
        start = time.perf_counter()
        builder.load()
        print(f"  {name}: ready ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Prebuild DeepSpeed's JIT ops (FusedAdam and the comm op) into the venv's cache.

Run once per venv on the kind of node that trains (`make ops`) so that 128 ranks never
JIT-compile into one shared cache at start-up. It builds for whatever accelerator DeepSpeed
detects: on a CPU login node a CPU FusedAdam, on a GPU node the CUDA one, for the
architectures in TORCH_CUDA_ARCH_LIST (`--arch-list`, e.g. `8.0` for A100, `8.0;9.0` for
A100 and H100 nodes), or else for the GPUs this node has. The CPU and CUDA builds share one
folder (`fused_adam/`): the last `make ops` wins, so on a cluster run it on a GPU node.

The cache is `<venv>/torch_extensions` (`PREBUILT_DIR`) unless TORCH_EXTENSIONS_DIR says
otherwise. `use_prebuilt_ops()`, called by train.py and the tools before DeepSpeed is
imported, points an unset TORCH_EXTENSIONS_DIR there and, for a CUDA build, an unset
TORCH_CUDA_ARCH_LIST at the list it was built for (DeepSpeed rebuilds when the list it would
derive differs), so a plain `deepspeed --hostfile ... train.py` loads the prebuilt ops.
`warn_if_jit_build()` says, on each rank, when the prebuilt op is missing for its device.

usage: python -m wavlm_ds.prebuild_ops [--arch-list "8.0;9.0"]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

OPS = ("FusedAdamBuilder", "ShareMemCommBuilder")
PREBUILT_DIR = os.path.join(sys.prefix, "torch_extensions")
MANIFEST = "wavlm_ds_prebuilt.json"  # in the cache: what the last `make ops` built for
log = logging.getLogger(__name__)
FIX = ("run `make ops` once on a GPU node of this cluster (it builds for that node's GPUs; "
       "`make ops TORCH_CUDA_ARCH_LIST=\"8.0;9.0\"` for several GPU models)")


def use_prebuilt_ops() -> str:
    """Default TORCH_EXTENSIONS_DIR to the venv's prebuilt cache, and TORCH_CUDA_ARCH_LIST to
    the list its CUDA ops were built for; return the cache in use."""
    cache = os.environ.setdefault("TORCH_EXTENSIONS_DIR", PREBUILT_DIR)
    arch_list = read_manifest(cache).get("cuda_arch_list")
    if arch_list:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", arch_list)
    return cache


def read_manifest(cache: str | Path) -> dict:
    try:
        return json.loads((Path(cache) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def cuda_arch_list(given: str | None) -> str:
    """The architectures to build for: `given`, else every visible GPU's, e.g. "8.0;9.0"."""
    if given:
        return given
    import torch
    caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    return ";".join(f"{major}.{minor}" for major, minor in caps)


def prebuilt_op_problem(device_type: str, capability: tuple[int, int] | None,
                        cache: str | Path) -> str | None:
    """Why DeepSpeed would JIT-build FusedAdam for this device at start-up, or None when the
    cache holds a build for it (read from the build's ninja file: nvcc and the arch)."""
    ninja = Path(cache) / "fused_adam" / "build.ninja"
    if not (ninja.is_file() and ninja.with_name("fused_adam.so").is_file()):
        return f"no prebuilt FusedAdam in {cache}"
    text = ninja.read_text(errors="replace")
    cuda_build = "nvcc" in text
    if device_type == "cuda" and not cuda_build:
        return f"the prebuilt FusedAdam in {cache} is a CPU build (`make ops` ran on a CPU node)"
    if device_type == "cuda" and capability is not None:
        arch = f"compute_{capability[0]}{capability[1]}"
        if arch not in text:
            return (f"the prebuilt FusedAdam in {cache} is built for other GPUs (no {arch} in "
                    "its build flags)")
    if device_type != "cuda" and cuda_build:
        return f"the prebuilt FusedAdam in {cache} is a CUDA build and this rank runs on CPU"
    return None


def uses_fused_adam(ds_config: dict) -> bool:
    """Whether DeepSpeed would load FusedAdam for this config (Adam/AdamW on the device,
    not torch's AdamW, no optimizer offload)."""
    optimizer = ds_config.get("optimizer", {})
    offload = ds_config.get("zero_optimization", {}).get("offload_optimizer", {})
    return (str(optimizer.get("type", "")).lower() in ("adam", "adamw")
            and not optimizer.get("params", {}).get("torch_adam", False)
            and offload.get("device", "none") in ("none", None))


def warn_if_jit_build(device, ds_config: dict, rank: int) -> str | None:
    """Log (and return) the start-up warning for a rank that would JIT-build FusedAdam, or
    return None if it would not: what is missing for this device, the command that fixes it."""
    if not uses_fused_adam(ds_config):
        return None
    capability = None
    if device.type == "cuda":
        import torch
        capability = torch.cuda.get_device_capability(device)
    cache = os.environ.get("TORCH_EXTENSIONS_DIR", PREBUILT_DIR)
    problem = prebuilt_op_problem(device.type, capability, cache)
    if problem is None:
        return None
    arch = ""
    if capability:
        arch = f" (TORCH_CUDA_ARCH_LIST={capability[0]}.{capability[1]} for this GPU)"
    message = (f"rank {rank}: {problem}: DeepSpeed will JIT-compile FusedAdam on this rank at "
               f"start-up (minutes, with every rank of the node waiting on one cache lock); "
               f"fix: {FIX}{arch}")
    log.warning("%s", message)
    return message


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch-list", default=os.environ.get("TORCH_CUDA_ARCH_LIST") or None,
                   help="CUDA architectures, e.g. '8.0' (A100) or '8.0;9.0'; default: this "
                        "node's GPUs")
    args = p.parse_args(argv)
    cache = use_prebuilt_ops()
    import torch
    manifest = {"accelerator": "cuda" if torch.cuda.is_available() else "cpu",
                "cuda_arch_list": None}
    if torch.cuda.is_available():
        manifest["cuda_arch_list"] = os.environ["TORCH_CUDA_ARCH_LIST"] = \
            cuda_arch_list(args.arch_list)
    from deepspeed.accelerator import get_accelerator

    from wavlm_ds import shm

    removed, freed = shm.sweep()  # orphaned CPU all-reduce buffers hold RAM the compiler needs
    if removed:
        print(f"removed {removed} orphaned DeepSpeed shm buffers ({freed / 2**20:.0f} MiB)")
    accel = get_accelerator()
    print(f"accelerator={accel.device_name()} TORCH_EXTENSIONS_DIR={cache} "
          f"TORCH_CUDA_ARCH_LIST={manifest['cuda_arch_list']}")
    for name in OPS:
        builder = accel.create_op_builder(name)
        if builder is None or not builder.is_compatible():
            print(f"  {name}: not available on {accel.device_name()}, skipped")
            continue
        start = time.perf_counter()
        builder.load()
        print(f"  {name}: ready ({time.perf_counter() - start:.1f} s)")
    Path(cache).mkdir(parents=True, exist_ok=True)
    (Path(cache) / MANIFEST).write_text(json.dumps(manifest) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

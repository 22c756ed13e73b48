"""What the lent GPU machine's Python has, and the wheels that bring what it lacks.

The GPU image (the device notes' KINDS.md, package list read on 2026-11-17; SPEC's facts):
Python 3.12 with torch 2.11.0 (+cu130), triton 3.6.0 and IMAGE_PACKAGES; no DeepSpeed,
pydantic, hjson, soundfile or braceexpand, and no network. `make wheelhouse` puts WHEELS
into `.whl/` (DeepSpeed built here from its sdist, the rest downloaded for cp312 manylinux);
the GPU check's first stage installs, into a --target folder, the wheels whose module does
not import there (one that does import, e.g. typing_extensions, keeps the image's).

usage: python -m wavlm_ds.bench.wheelhouse install WHEEL_DIR TARGET_DIR
       python -m wavlm_ds.bench.wheelhouse check WHEEL_DIR   (under 64 MiB, one version each)
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

CARRY_LIMIT_BYTES = 64 << 20  # what one device call carries, the working tree included
# distribution (as the Makefile's GPU_WHEELS names it, plus DeepSpeed) -> its top-level module
WHEELS = {"deepspeed": "deepspeed", "hjson": "hjson", "pydantic": "pydantic",
          "pydantic-core": "pydantic_core", "annotated-types": "annotated_types",
          "typing-inspection": "typing_inspection", "typing-extensions": "typing_extensions",
          "braceexpand": "braceexpand", "soundfile": "soundfile", "cffi": "cffi",
          "pycparser": "pycparser"}
# installed beside a missing package whatever the image has: pydantic 2 needs a newer
# typing_extensions than an image may hold
WITH = {"pydantic": ("typing-extensions",)}
IMAGE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator
lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx
ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf
psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz
torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers
treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp""".split())


def normalize(name: str) -> str:
    """A distribution name as pip compares them: lower case, runs of -_. as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_distribution(path: Path) -> tuple[str, str]:
    """(normalized distribution, version) from a wheel's file name."""
    name, version = path.name.split("-")[:2]
    return normalize(name), version


def missing_wheels(wheel_dir: Path) -> tuple[list[Path], list[str]]:
    """(wheels to install, distributions in WHEELS with no wheel in wheel_dir): the wheels of
    WHEELS whose module does not import here."""
    by_dist = {wheel_distribution(w)[0]: w for w in sorted(wheel_dir.glob("*.whl"))}
    needed = [d for d, module in WHEELS.items() if importlib.util.find_spec(module) is None]
    needed += [d for n in needed for d in WITH.get(n, ()) if d not in needed]
    return [by_dist[d] for d in needed if d in by_dist], [d for d in needed if d not in by_dist]


def install(wheel_dir: Path, target: Path) -> int:
    wheels, absent = missing_wheels(wheel_dir)
    print(f"modules missing here: {len(wheels) + len(absent)} "
          f"({', '.join(w.name for w in wheels) or 'none'})")
    if absent:
        print(f"no wheel in {wheel_dir} for: {', '.join(absent)}; fix: run `make wheelhouse` "
              f"on the machine that makes the device call, and carry {wheel_dir.name}")
        return 1
    if not wheels:
        return 0
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
           "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(target),
           *map(str, wheels)]
    return subprocess.call(cmd)


def check(wheel_dir: Path) -> list[str]:
    """Problems that would stop the device call: over the carry limit, two versions of one
    package (pip then refuses the whole install), a wheel of WHEELS absent."""
    wheels = sorted(wheel_dir.glob("*.whl"))
    problems = []
    size = sum(w.stat().st_size for w in wheels)
    if size >= CARRY_LIMIT_BYTES:
        problems.append(f"{wheel_dir}: {size / 2**20:.1f} MiB of wheels, the limit is 64 MiB")
    versions: dict[str, list[str]] = {}
    for w in wheels:
        dist, version = wheel_distribution(w)
        versions.setdefault(dist, []).append(version)
    problems += [f"{dist}: {len(v)} versions ({', '.join(v)}); keep one"
                 for dist, v in versions.items() if len(v) > 1]
    problems += [f"{dist}: no wheel" for dist in WHEELS if dist not in versions]
    return problems


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("action", choices=["install", "check"])
    p.add_argument("wheel_dir", type=Path)
    p.add_argument("target", type=Path, nargs="?")
    args = p.parse_args(argv)
    if args.action == "install":
        if args.target is None:
            p.error("install needs TARGET_DIR")
        return install(args.wheel_dir, args.target)
    problems = check(args.wheel_dir)
    size = sum(w.stat().st_size for w in args.wheel_dir.glob("*.whl"))
    print(f"{args.wheel_dir}: {len(list(args.wheel_dir.glob('*.whl')))} wheels, "
          f"{size / 2**20:.1f} MiB" + "".join(f"\n  problem: {x}" for x in problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Run train.py in this process with every host-synchronizing tensor call counted.

usage: python tests/integration/count_syncs.py OUT.json -- <train.py arguments>

Counted: Tensor.item, tolist, __bool__, __float__, __int__ (what would wait for the GPU on
CUDA). Each call is attributed to the innermost frame that is project code (train.py,
wavlm_ds/) or DeepSpeed: DeepSpeed's calls are keyed by the DeepSpeed function our code
called (e.g. `step`); ours by file:function. Steps are delimited by train.py's per-step
`fault_point("step<N>")`. On CPU every tensor is a host tensor, so three sites that by
construction read host tensors even on CUDA (the loader's lengths, the CPU layerdrop
generator, host lengths for the padding decision) are recorded as `host:` when the tensor
is on the CPU; the test asserts which sites these are. wavlm_ds/data is not counted: it
runs in DataLoader worker processes on host tensors.
"""
from __future__ import annotations

import collections
import json
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

HOST_SITES = {"engine.py:host_batch_info", "encoder.py:draw_layerdrop", "encoder.py:is_padded"}
METHODS = ("item", "tolist", "__bool__", "__float__", "__int__")
counts: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
current = {"step": 0}


def site_of(stack: list[traceback.FrameSummary]) -> str | None:
    """Innermost project or DeepSpeed frame -> 'ours:file:func' / 'deepspeed:entry'."""
    for i in range(len(stack) - 1, -1, -1):
        f = stack[i].filename
        if "/deepspeed/" in f:
            j = i
            while j > 0 and "/deepspeed/" in stack[j - 1].filename:
                j -= 1
            return f"deepspeed:{stack[j].name}"
        if f.startswith(str(ROOT)) and not any(d in f for d in ("/tests/", "/.venv/",
                                                                 "site-packages")):
            if "/wavlm_ds/data/" in f:
                return None
            return f"ours:{Path(f).name}:{stack[i].name}"
    return None


def wrap(name: str):
    original = getattr(torch.Tensor, name)

    def counted(self, *args, **kwargs):
        site = site_of(traceback.extract_stack()[:-1])
        if site is not None:
            short = site.split(":", 1)[1]
            if short in HOST_SITES and self.device.type == "cpu":
                site = f"host:{short}"
            counts[current["step"]][f"{site}:{name}"] += 1
        return original(self, *args, **kwargs)

    setattr(torch.Tensor, name, counted)


def main() -> int:
    out, _, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    import train
    real_fault_point = train.fault_point

    def fault_point(where: str, rank: int) -> None:
        if where.startswith("step"):
            current["step"] = int(where[4:])
        real_fault_point(where, rank)

    train.fault_point = fault_point
    for name in METHODS:
        wrap(name)
    code = train.main(args)
    Path(out).write_text(json.dumps({str(k): dict(v) for k, v in counts.items()}, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())

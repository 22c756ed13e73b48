"""Peak of live tensor bytes on any device, CPU included (what CUDA's memory_allocated
reports, without allocator caching or fragmentation).

`LiveBytes` is a dispatch mode: every storage an operator returns is counted once, from
its creation until it is freed (a weakref finalizer on the storage). Storages that existed
before (parameters, gradients, inputs: pass them as `existing`) are not counted, so a view
such as a weight's `.t()` allocates nothing. Used by the planner's activation check
(wavlm_ds.plan.measure_activations) and tools/bench_ops.py.
"""
from __future__ import annotations

import weakref
from typing import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    def __init__(self, existing: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.seen: dict[int, int] = {}
        self.existing = {t.untyped_storage()._cdata for t in existing if t is not None}

    def _free(self, key: int) -> None:
        self.live -= self.seen.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.seen and key not in self.existing:
                    self.seen[key] = storage.nbytes()
                    self.live += self.seen[key]
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key)
        return out

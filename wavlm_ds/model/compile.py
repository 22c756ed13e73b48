"""Regional torch.compile: each transformer block compiled on its own (as torchtitan does).

Compiling per block instead of the whole encoder keeps compile time to one block's graph
(the blocks share code, and with dynamo's inlined nn.Modules they share the graph too),
leaves the Python-level decisions (layerdrop, activation checkpointing, the flex block
mask) outside the graph, and works under DeepSpeed's engine, whose ZeRO hooks sit on the
parameters, not on the block's forward. `dynamic=None` (automatic dynamic shapes): the
first length compiles static, the second recompiles once with T symbolic, and every
further length reuses that graph. `fullgraph=True`: a graph break is an error, not a
silent slowdown.
"""
from __future__ import annotations

import shutil

import torch
from torch import nn


def compile_support_problem(device_type: str) -> str | None:
    """Why torch.compile (inductor) cannot run here, or None if it can."""
    if not torch._dynamo.is_dynamo_supported():
        return "this Python/torch build does not support torch.compile (dynamo)"
    if device_type == "cuda":
        from torch.utils._triton import has_triton
        if not has_triton():
            return "inductor needs Triton on CUDA and this torch build has none"
    elif not (shutil.which("c++") or shutil.which("g++")):
        return "inductor's CPU backend needs a C++ compiler (c++/g++) on PATH"
    return None


def compile_blocks(encoder: nn.Module) -> None:
    """Compile every block of `encoder` in place (state-dict keys unchanged)."""
    for block in encoder.blocks:
        block.compile(fullgraph=True, dynamic=None)
    encoder.compiled = True

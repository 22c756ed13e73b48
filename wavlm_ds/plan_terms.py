"""The planner's terms beyond FLOPs: communication per step, mean segment, data rate.

Communication per optimizer step (deepspeed 0.19.8), S = parameters x bytes of the
communication dtype (`communication_data_type`; default bf16 when bf16 is on, so ~1.2 GB
for 600M parameters):

  optimizer DeepSpeed selects           | gradient reduction                 | parameters
  DDP (no ZeRO; bf16 needs bf16 accum.) | 1 all-reduce per step (2S)         | -
  BF16_Optimizer (ZeRO-1, bf16 params,  | 1 all-reduce per step (2S), of the | all-gather (S)
    grad_accum_dtype fp32: engine.py    |   fp32 accumulated gradients cast  |
    _do_optimizer_sanity_check)         |   to the communication dtype       |
  DeepSpeedZeroOptimizer, ZeRO-1 other  | 1 reduce-scatter per step (S)      | all-gather (S)
  DeepSpeedZeroOptimizer, ZeRO-2        | 1 reduce-scatter per MICRO-batch   | all-gather (S)
                                        |   (accumulation x S)               |

Units: "S" is what a ring reduce-scatter or all-gather moves per GPU, S (N - 1) / N; an
all-reduce is both. Between nodes (NCCL rings over the 8 rails of a DGX, NVLink inside a
node, taken as free) a node sends the same figure: S (n - 1) / n for n nodes, over the node
fabric (`node_gbps`: default a DGX A100, 8 x 200 Gb/s HDR InfiniBand = 1600 Gb/s).
Exposed time = (1 - overlap) x gradient reduction (overlapped with backward: bucketed,
`overlap_comm`) + the parameter all-gather (after the optimizer step, never overlapped).
Step time = compute (FLOPs / MFU) + exposed communication.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from wavlm_ds.data.index import ShardIndexError, read_index
from wavlm_ds.data.sample_index import load_sample_index

DTYPE_BYTES = {"bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "fp32": 4, "float32": 4}
MAX_SHARDS_SAMPLED = 256  # per source: sample indexes read to estimate the mean segment


@dataclass(frozen=True)
class Fabric:
    node_gbps: float = 1600.0  # inter-node bandwidth per node (DGX A100: 8 x 200 Gb/s HDR)
    overlap: float = 0.5  # fraction of the gradient reduction hidden behind backward


def selected_optimizer(ds: dict, stage: int) -> str:
    """The optimizer wrapper DeepSpeed 0.19.8 builds for `ds` at ZeRO `stage` (mirrors
    DeepSpeedEngine._do_optimizer_sanity_check)."""
    bf16 = ds.get("bf16", {}).get("enabled", False)
    accum = ds.get("data_types", {}).get("grad_accum_dtype")
    if stage == 0:
        if bf16 and accum not in (None, "bf16", "bfloat16"):
            return "none (DeepSpeed 0.19.8 has no bf16 + fp32-accumulation mode without ZeRO)"
        return "DDP"
    offload = ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device",
                                                                                "none")
    if stage == 1 and bf16 and accum in ("fp32", "float32") and offload in (None, "none"):
        return "BF16_Optimizer"
    return "DeepSpeedZeroOptimizer" if stage in (1, 2) else "DeepSpeedZeroOptimizer_Stage3"


def communication(params: int, ds: dict, stage: int, accum: int, gpus: int, gpus_per_node: int,
                  fabric: Fabric) -> dict:
    """Bytes and seconds of one optimizer step's collectives (table in the docstring)."""
    bf16 = ds.get("bf16", {}).get("enabled", False)
    dtype = ds.get("communication_data_type") or ("bf16" if bf16 else "fp32")
    S = params * DTYPE_BYTES[dtype]
    optimizer = selected_optimizer(ds, stage)
    if stage == 0:
        grad_units, param_units, op = 2.0, 0.0, "1 all-reduce per step"
    elif stage == 1:
        grad_units, param_units = (2.0, 1.0) if optimizer == "BF16_Optimizer" else (1.0, 1.0)
        op = "1 all-reduce per step" if grad_units == 2 else "1 reduce-scatter per step"
    elif stage == 2:
        grad_units, param_units, op = float(accum), 1.0, f"{accum} reduce-scatters (1 per micro-batch)"
    else:
        raise ValueError(f"ZeRO-{stage}: communication not modelled (stages 0-2)")
    nodes = max(1, math.ceil(gpus / gpus_per_node))
    per_gpu = S * (gpus - 1) / max(gpus, 1)
    per_node = S * (nodes - 1) / nodes  # inter-node, NVLink inside a node taken as free
    node_bytes_per_s = fabric.node_gbps * 1e9 / 8
    grad_s, param_s = grad_units * per_node / node_bytes_per_s, param_units * per_node / node_bytes_per_s
    return {"optimizer": optimizer, "dtype": dtype, "S_bytes": S, "gradient_op": op,
            "gradient_bytes_per_gpu": grad_units * per_gpu,
            "gradient_bytes_per_node": grad_units * per_node,
            "parameter_bytes_per_gpu": param_units * per_gpu,
            "parameter_bytes_per_node": param_units * per_node,
            "units_of_S": grad_units + param_units, "gradient_s": grad_s, "parameter_s": param_s,
            "exposed_s": (1 - fabric.overlap) * grad_s + param_s,
            "node_gbps": fabric.node_gbps, "overlap": fabric.overlap}


def segment_mean(sources, max_duration_s: float, min_duration_s: float,
                 max_shards: int = MAX_SHARDS_SAMPLED) -> tuple[float | None, list[str], dict]:
    """(mean training segment in seconds, sources without sample indexes, details) from the
    sources' per-sample durations: cropped at max_duration_s, dropped below min_duration_s;
    sources weighted by their `weight`. Reads up to `max_shards` sample indexes per source,
    evenly spaced. None when no source has them."""
    means, weights, missing, details = [], [], [], {}
    for src in sources:
        durations = _durations(str(src.shards), max_shards)
        if not durations:
            missing.append(src.name)
            continue
        kept = [min(d, max_duration_s) for d in durations if d >= min_duration_s]
        means.append(sum(kept) / max(len(kept), 1))
        weights.append(src.weight)
        details[src.name] = {"samples_read": len(durations), "mean_s": means[-1],
                             "dropped_fraction": 1 - len(kept) / len(durations)}
    if not means:
        return None, missing, details
    return sum(m * w for m, w in zip(means, weights)) / sum(weights), missing, details


def _durations(spec: str, max_shards: int) -> list[float]:
    if not spec.endswith(".json"):
        return []
    try:
        urls = [u for u in read_index(spec).sample_index_urls() if u]
    except ShardIndexError:
        return []
    step = max(1, len(urls) // max_shards)
    stats: Counter = Counter()
    return [e.duration_s for u in urls[::step][:max_shards]
            for e in load_sample_index(u, stats) if e.duration_s is not None]


def data_rate(train_batch: int, segment_s: float, step_s: float, nodes: int, gpus_per_node: int,
              audio_s_per_core_s: float) -> dict:
    """Audio seconds per second each node must decode, and the CPU cores that takes at the
    measured decode rate (tools/bench_data.py: audio seconds per core-second)."""
    per_node = train_batch * segment_s / step_s / nodes
    return {"audio_s_per_s_per_node": per_node, "audio_s_per_s_per_gpu": per_node / gpus_per_node,
            "audio_s_per_core_s": audio_s_per_core_s,
            "cores_per_node": per_node / audio_s_per_core_s}

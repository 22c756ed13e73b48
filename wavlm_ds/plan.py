"""Run planning arithmetic, no hardware needed: parameters, FLOPs, memory per GPU, time.

Memory per GPU, in bytes, for bf16 training with fp32 master weights, AdamW and fp32
gradient accumulation (the recipe's `data_types.grad_accum_dtype: fp32`); P parameters,
N data-parallel GPUs:

  stage | bf16 params | bf16 grads | fp32 grads | fp32 master + Adam m, v
  0     | 2P          | 2P         | 4P         | 12P
  1     | 2P          | 2P         | 4P         | 12P / N
  2     | 2P          | 2P / N     | 4P / N     | 12P / N      (= 2P + 18P/N: DeepSpeed's
        |             |            |            |  estimate_zero2_model_states_mem_needs)
  3     | 2P / N      | 2P / N     | 4P / N     | 12P / N      + the largest layer gathered

What that formula leaves out, from the DeepSpeed config (deepspeed 0.19.8,
runtime/zero/stage_1_and_2.py): the contiguous reduce bucket (`reduce_bucket_size`
elements, twice with `overlap_comm`, bf16 under ZeRO-2, fp32 under ZeRO-1 with fp32
accumulation), the all-gather of updated parameters (at most `allgather_bucket_size` bf16
elements in flight), and under ZeRO-1 with fp32 accumulation the per-parameter fp32
`grad_accum` copies (counted above as fp32 grads 4P). Activations come on top.

Activations (`activation_bytes`) are counted tensor by tensor from what this model's
forward saves for backward (wavlm_ds/model, the blocked / FlexAttention path: q, k, v, the
attention output and its log-sum-exp, never a (B, H, T, T) tensor), plus the largest
transient of the backward pass; with activation checkpointing, each block keeps only its
input and one block at a time is recomputed. tools/estimate.py --measure checks this
against the peak of live tensor bytes of a real forward + backward on the CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from wavlm_ds.config import ModelConfig, RunConfig
from wavlm_ds.model.flops import encoder_frames, forward_flops
from wavlm_ds.plan_terms import Fabric, communication, data_rate

# BENCHMARKS.md, data path: tools/bench_data.py, speech, 1 worker, no log-Mel (this machine)
DECODE_AUDIO_S_PER_CORE_S = 1367.0

GiB = 2**30
ADAM_STATE = 12  # fp32 master weights + Adam m + v, bytes per parameter


@dataclass
class Cluster:
    gpus: int
    gpus_per_node: int = 8
    peak_tflops: float | None = None  # dense bf16 per GPU
    hbm_gib: float = 80.0
    mfu: float = 0.35


def count_parameters(cfg: RunConfig) -> tuple[int, int]:
    """(trainable parameters of encoder + objective head, largest block's parameters),
    from the real modules built on the meta device (nothing allocated)."""
    import torch

    from wavlm_ds.engine import build_model

    with torch.device("meta"):
        model = build_model(cfg)
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    largest = max((sum(p.numel() for p in b.parameters()) for b in model.encoder.blocks),
                  default=0)
    return total, largest


def model_states(params: int, world: int, stage: int, largest_layer: int = 0) -> dict[str, float]:
    """Bytes per GPU of parameters, gradients and optimizer state (table in the docstring)."""
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_optimization.stage={stage}: must be 0, 1, 2 or 3")
    n = max(world, 1)
    terms = {
        "bf16 parameters": 2 * params / (n if stage >= 3 else 1),
        "bf16 gradients": 2 * params / (n if stage >= 2 else 1),
        "fp32 gradients (accumulation)": 4 * params / (n if stage >= 2 else 1),
        "fp32 master weights + Adam moments": ADAM_STATE * params / (n if stage >= 1 else 1),
    }
    if stage == 3:
        terms["largest layer gathered (bf16)"] = 2 * largest_layer
    return terms


def deepspeed_zero2_gpu_bytes(params: int, gpus_per_node: int, nodes: int) -> int:
    """GPU bytes by DeepSpeed's own estimate_zero2_model_states_mem_needs (no CPU offload)."""
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    _, gpu = estimate_zero2_model_states_mem_needs(params, gpus_per_node, nodes,
                                                   cpu_offload=False)
    return gpu


def zero_buffers(ds: dict, stage: int) -> dict[str, float]:
    """The communication buffers DeepSpeed allocates beyond the model states (bytes)."""
    zero = ds.get("zero_optimization", {})
    if stage == 0:
        return {}
    fp32_accum = ds.get("data_types", {}).get("grad_accum_dtype") == "fp32"
    elem = 4 if (stage == 1 and fp32_accum) else 2
    reduce = float(zero.get("reduce_bucket_size", 5e8))
    copies = 2 if zero.get("overlap_comm", stage == 2) else 1
    out = {}
    if zero.get("contiguous_gradients", True):
        out[f"reduce bucket ({copies} x {reduce:.3g} elements)"] = copies * reduce * elem
    else:
        out[f"reduce bucket ({reduce:.3g} elements)"] = reduce * elem
    out["all-gather bucket (bf16, in flight)"] = 2 * float(zero.get("allgather_bucket_size", 5e8))
    return out


def activation_bytes(m: ModelConfig, micro: int, num_input_frames: int, act_bytes: int = 2,
                     checkpointing: bool | None = None, device: str = "cuda") -> dict[str, float]:
    """Activation memory of one micro-batch (bytes): what forward saves, and the peak.

    Per block, b rows of T encoder frames, s = act_bytes (elements x s unless noted):
    LayerNorm inputs and outputs 4 bTd, q k v 3 bTd (views of one projection), the
    attention output kept by the kernel (FlexAttention on CUDA: s; the blocked CPU kernel
    keeps it in fp32) and its transposed copy for the out projection 1 bTd, FFN hidden
    before and after GELU 2 bTf (+1 with activation dropout), two dropout masks (CUDA's
    fused dropout: 1 byte per element; CPU's composite dropout: s), the attention
    log-sum-exp (fp32), gate and gate sigmoids ~4 bHT, LayerNorm statistics (fp32) 4 bT.
    Outside the blocks: the masked, stacked input b T_in 80, the front end's linear, GELU and
    norm 3 bT fe, the positional convolution, its weight-normed kernel and the norms 6 bTd
    (on CPU in bf16 the conv runs in fp32: its input and kernel kept in fp32, v too),
    and the reconstruction head's fp32 error b T_in 80.
    Backward (the peak is at the top block): the FFN's backward with the whole block saved
    (+ two bTf gradients), then attention's with the FFN part freed: on CUDA the q, k, v
    and output gradients 4 bTd; on CPU the blocked kernel's fp32 upcasts and gradients (7 x
    4 bTd), its casts back 3 bTd and up to six fp32 (b, H, BLOCK, T) score tiles; plus the gradient
    flowing between blocks 2 bTd. With checkpointing the top block is recomputed first.
    """
    from wavlm_ds.ops.blocked_attention import BLOCK

    ckpt = m.activation_checkpointing if checkpointing is None else checkpointing
    cuda = device == "cuda"
    b, s = micro, act_bytes
    T = encoder_frames(num_input_frames, m.frame_stack)
    T_in, d, f, H, fe = num_input_frames, m.model_dim, m.ffn_dim, m.num_heads, m.frontend_dim
    mask_b = 1 if cuda else s
    out_b = s if cuda else 4
    drop = 1 if m.dropout > 0 else 0
    act_drop = 1 if m.activation_dropout > 0 else 0
    bT = b * T
    block = (s * bT * d * 8 + out_b * bT * d + s * bT * f * (2 + act_drop)
             + mask_b * bT * (2 * d * drop + f * act_drop)
             + 4 * b * H * T + 3 * s * b * H * T + 2 * 2 * 4 * bT)
    if m.attention_dropout > 0:  # the reference path: explicit (B, H, T, T) scores and bias
        block += b * H * T * T * (3 * s + mask_b)
    pos_kernel = d * (d // m.conv_pos_groups) * m.conv_pos_kernel
    # the positional conv on CPU in bf16 computes in fp32 (model.encoder): it keeps the
    # fp32 input, the fp32 v and the fp32 weight-normed kernel instead of the s-byte kernel
    pos_conv = s * pos_kernel if cuda or s == 4 else 4 * (2 * pos_kernel + bT * d)
    outside = (s * b * T_in * m.num_mel_bins + s * bT * fe * 3 + s * bT * d * 6
               + mask_b * bT * d * 2 * drop + 4 * b * T_in * m.num_mel_bins + pos_conv)
    ffn_part = s * bT * f * (2 + act_drop) + mask_b * bT * (f * act_drop + d * drop) + 2 * s * bT * d
    if cuda:
        attn_transient = 4 * s * bT * d
    else:  # fp32 score tiles: three of the last query block alive while the next one's
        # three are built (five in one pass when T <= BLOCK), int64 offsets
        rows = 5 * T if T <= BLOCK else 3 * BLOCK + 3 * min(BLOCK, T - BLOCK)
        attn_transient = (28 * bT * d + 3 * s * bT * d + 4 * b * H * rows * T
                          + 8 * min(BLOCK, T) * T)
    ffn_transient = 2 * s * bT * f
    # Backward of the top block: FFN first (all of the block saved), then attention (the
    # FFN's saved tensors already freed); the gradient between blocks 2 bTd throughout.
    top = max(block + ffn_transient, block - ffn_part + attn_transient) + 2 * s * bT * d
    transient = top - block
    if ckpt:  # block inputs kept, the top block recomputed on top of them
        saved = outside + m.num_layers * s * bT * d
        peak = saved + top
    else:
        saved = outside + m.num_layers * block
        peak = saved - block + top
    return {"per_block": block, "outside_blocks": outside, "saved": saved,
            "backward_transient": transient, "peak": peak, "encoder_frames": T,
            "checkpointing": ckpt, "device": device}


def checkpoint_bytes(params: int, gpus: int) -> dict:
    """Bytes of one checkpoint (bf16 module weights, written once, + fp32 master and Adam
    state, partitioned under ZeRO-1/2) and what a save and a resume read: a save hashes every
    file once, on the rank that wrote it; a resume hashes it once, on rank 0 (the others
    check sizes), and DeepSpeed loads the module weights on every rank plus each rank's
    optimizer partition."""
    size = 2 * params + ADAM_STATE * params
    return {"bytes": size, "save_hashed": size, "resume_hashed": size,
            "resume_hashed_before": 2 * size * gpus,
            "resume_loaded": gpus * 2 * params + ADAM_STATE * params}


def schedule(ds: dict) -> dict:
    sched = ds.get("scheduler", {}).get("params", {})
    return {"total_num_steps": sched.get("total_num_steps"),
            "warmup_num_steps": sched.get("warmup_num_steps")}


def steps_for_budget(seconds: float, step_time_s: float) -> int:
    """Optimizer steps that fit in a wall-clock budget (rounded down to a multiple of 1000)."""
    return max(int(seconds / step_time_s) // 1000 * 1000, 1000)


def plan(cfg: RunConfig, ds: dict, cluster: Cluster, segment_seconds: float,
         corpus_hours: float | None, params: tuple[int, int] | None = None,
         budget_days: float | None = None, budget_gpu_hours: float | None = None,
         fabric: Fabric = Fabric(), audio_s_per_core_s: float = DECODE_AUDIO_S_PER_CORE_S,
         ) -> dict:
    """Every figure of tools/estimate.py, with warnings where inputs disagree. Step time =
    compute (FLOPs / MFU) + exposed communication (wavlm_ds/plan_terms.py)."""
    from wavlm_ds.config import check_batch_arithmetic

    warnings: list[str] = []
    train_batch, micro, accum = check_batch_arithmetic(ds, cluster.gpus, "deepspeed config")
    total, largest = params or count_parameters(cfg)
    stage = int(ds.get("zero_optimization", {}).get("stage", 0))
    nodes = max(1, math.ceil(cluster.gpus / cluster.gpus_per_node))
    T_in = round(segment_seconds * 100)  # 10 ms log-Mel frames
    T_enc = encoder_frames(T_in, cfg.model.frame_stack)

    fwd = forward_flops(cfg.model, T_in, 1)
    step_flops = 3 * fwd * train_batch
    act_bytes = 2 if ds.get("bf16", {}).get("enabled") else 4
    acts = {ck: activation_bytes(cfg.model, micro, T_in, act_bytes, ck)["peak"]
            for ck in (False, True)}  # the same under every ZeRO stage
    memory = {}
    for st in (0, 1, 2, 3):
        states = model_states(total, cluster.gpus, st, largest)
        buffers = zero_buffers(ds, st)
        memory[st] = {"model_states": states, "buffers": buffers,
                      "activations": acts,
                      "total": {ck: sum(states.values()) + sum(buffers.values()) + a
                                for ck, a in acts.items()}}
    chosen = memory[stage]["total"][cfg.model.activation_checkpointing]
    if chosen > cluster.hbm_gib * GiB:
        warnings.append(f"does not fit: ZeRO-{stage} needs {chosen / GiB:.1f} GiB per GPU "
                        f"> {cluster.hbm_gib:g} GiB HBM; enable activation checkpointing, a "
                        "higher ZeRO stage, or a smaller micro-batch")

    audio_h_per_step = train_batch * segment_seconds / 3600
    out = {
        "parameters": total, "largest_block_parameters": largest,
        "batch": {"global": train_batch, "micro": micro, "accumulation": accum,
                  "gpus": cluster.gpus, "nodes": nodes},
        "segment": {"seconds": segment_seconds, "input_frames": T_in, "encoder_frames": T_enc},
        "flops": {"forward_per_segment": fwd, "train_per_step": step_flops,
                  "train_per_encoder_frame": 3 * fwd / T_enc},
        "memory_zero_stage": stage, "memory": memory,
        "deepspeed_zero2_formula_gpu_bytes": deepspeed_zero2_gpu_bytes(
            total, cluster.gpus_per_node, nodes),
        "audio_hours_per_step": audio_h_per_step, "warnings": warnings,
    }
    if cluster.peak_tflops is None:
        warnings.append("unknown device peak: pass --peak-tflops (A100 bf16: 312); no time "
                        "figures")
        return out
    compute_s = step_flops / (cluster.gpus * cluster.peak_tflops * 1e12 * cluster.mfu)
    floor = step_flops / (cluster.gpus * cluster.peak_tflops * 1e12)
    comm = {st: communication(total, ds, st, accum, cluster.gpus, cluster.gpus_per_node, fabric)
            for st in (0, 1, 2)}
    exposed = comm[stage]["exposed_s"] if stage in comm else 0.0
    if stage not in comm:
        warnings.append(f"ZeRO-{stage}: communication not modelled; step time is compute only")
    step_time = compute_s + exposed
    sched = schedule(ds)
    out["communication"] = comm
    out["time"] = {"step_s": step_time, "compute_s": compute_s, "exposed_comm_s": exposed,
                   "step_s_at_100pct_mfu": floor, "mfu": cluster.mfu,
                   "peak_tflops": cluster.peak_tflops}
    out["checkpoint"] = checkpoint_bytes(total, cluster.gpus)
    out["data_rate"] = data_rate(train_batch, segment_seconds, step_time, nodes,
                                 cluster.gpus_per_node, audio_s_per_core_s)
    if corpus_hours:
        epoch_steps = corpus_hours / audio_h_per_step
        out["epoch"] = {"corpus_hours": corpus_hours, "steps": epoch_steps,
                        "days": epoch_steps * step_time / 86400}
    if sched["total_num_steps"]:
        n = sched["total_num_steps"]
        days = n * step_time / 86400
        out["schedule"] = {"total_num_steps": n, "days": days,
                           "gpu_hours": days * 24 * cluster.gpus,
                           "audio_hours": n * audio_h_per_step,
                           "epochs": (n * audio_h_per_step / corpus_hours) if corpus_hours else None}
    if budget_days is not None:
        derived = steps_for_budget(budget_days * 86400, step_time)
        out["budget"] = {"days": budget_days, "gpu_hours": budget_days * 24 * cluster.gpus,
                         "derived_total_num_steps": derived,
                         "epochs": derived * audio_h_per_step / corpus_hours if corpus_hours else None}
        stated = sched["total_num_steps"]
        if stated and abs(stated - derived) > 0.05 * derived:
            warnings.append(
                f"scheduler.params.total_num_steps={stated} takes {stated * step_time / 86400:.1f} "
                f"days at {cluster.mfu:.0%} MFU, not the {budget_days:g}-day budget "
                f"({derived} steps); run with --write-steps to set it")
    if budget_gpu_hours is not None:
        gh_days = budget_gpu_hours / 24 / cluster.gpus
        out.setdefault("budget", {})["stated_gpu_hours"] = budget_gpu_hours
        if budget_days is not None and abs(gh_days - budget_days) > 0.05 * budget_days:
            warnings.append(
                f"the stated budgets disagree: {budget_gpu_hours:,.0f} GPU-hours on "
                f"{cluster.gpus} GPUs is {gh_days:,.1f} days, not {budget_days:g} days "
                f"({budget_days * 24 * cluster.gpus:,.0f} GPU-hours); {budget_days:g} days "
                f"on {cluster.gpus} GPUs gives {steps_for_budget(budget_days * 86400, step_time)}"
                f" steps, {budget_gpu_hours:,.0f} GPU-hours would give "
                f"{steps_for_budget(gh_days * 86400, step_time)}")
    return out


def measure_activations(cfg: RunConfig, micro: int, num_input_frames: int,
                        dtype: str = "bfloat16", seed: int = 0) -> dict[str, float]:
    """Measured on this device: one training forward + backward of the real model (encoder +
    objective) at (micro, num_input_frames), parameters in `dtype` and their gradients
    allocated beforehand (DeepSpeed owns those); returns the live tensor bytes after forward
    (what was saved) and their peak over forward + backward (every tensor created by an
    operator counted once per storage until it is freed, as CUDA's memory_allocated does).

    On CPU the blocked kernel runs at every size here, as `activation_bytes` models it: the
    trainer's `blocked` switches to the explicit-bias math at or below
    ops.attention.BLOCKED_MIN_SCORES scores per call (at most 16 MiB of fp32 scores per
    layer), where memory is not the constraint."""
    import dataclasses

    import torch

    from wavlm_ds.engine import build_model
    from wavlm_ds.memory import LiveBytes
    from wavlm_ds.ops.attention import blocked_at_every_size

    torch.manual_seed(seed)
    run_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, layerdrop=0.0))
    model = build_model(run_cfg).to(getattr(torch, dtype)).train()
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(micro, num_input_frames, cfg.model.num_mel_bins, generator=gen)
    targets = torch.randn(micro, num_input_frames, cfg.model.num_mel_bins, generator=gen)
    lengths = torch.full((micro,), num_input_frames)
    mask = torch.rand(micro, num_input_frames, generator=gen) < 0.8
    existing = [features, targets, lengths, mask, *model.parameters(), *model.buffers(),
                *(p.grad for p in model.parameters() if p.grad is not None)]
    mode = LiveBytes(existing)
    with mode, blocked_at_every_size():
        loss, _ = model(features, targets, lengths, mask)
        after_forward = mode.live
        loss.backward()
        del loss
    return {"saved": float(after_forward), "peak": float(mode.peak)}

"""DeepSpeed engine set-up and the per-step device work of the trainer.

What lives here: seeded generators, parameter groups, `deepspeed.initialize` with our safe
checkpoint engine, and `prepare_micro` (audio -> log-Mel on the device -> utterance mixing
-> span mask). The loop itself is in `train.py`.

Randomness: masks, mixing and layerdrop draw from explicit generators seeded from
(seed, step, micro[, rank]); dropout uses torch's global RNG, which is seeded per rank at
start and saved/restored per rank in checkpoints. So a resumed run replays exactly.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import deepspeed
import torch
import torch.distributed as dist

from wavlm_ds import shm
from wavlm_ds.checkpoint import SafeCheckpointEngine
from wavlm_ds.config import RunConfig, SourceConfig
from wavlm_ds.data import TrainLoader, mix_utterances
from wavlm_ds.data.pipeline import hash_seed
from wavlm_ds.model import WavLMEncoder
from wavlm_ds.objectives import PretrainModel, build_objective
from wavlm_ds.ops.logmel import log_mel, normalize_per_segment, window_samples
from wavlm_ds.ops.span_mask import fairseq_span_mask, span_mask

# Stream names keep generators of different purposes independent for the same step.
MASK, MIX, LAYERDROP, EVAL_MASK, DROPOUT, OBJECTIVE, NOISE = 1, 2, 3, 4, 5, 6, 7
NAN_ENV = "WAVLM_DS_INJECT_NAN"  # see injected_poison


def seed_for(seed: int, *keys: int) -> int:
    """hash_seed(seed, *keys) cut to 63 bits (torch.manual_seed's safe range)."""
    return hash_seed(seed, *keys) >> 1


def make_generator(device: torch.device | str, seed: int, *keys: int) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed_for(seed, *keys))
    return gen


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the launcher's environment (1 process if unset)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(timeout_s: int) -> None:
    """Join the process group; on CPU, local rank 0 first removes orphaned shm buffers and
    every rank unlinks its own at exit (wavlm_ds.shm: DeepSpeed never does)."""
    if os.environ.get("LOCAL_RANK", "0") == "0":
        shm.sweep()
    deepspeed.init_distributed(timeout=datetime.timedelta(seconds=timeout_s))
    shm.release_at_exit()


def param_groups(model: torch.nn.Module, patterns: tuple[str, ...]) -> list[dict]:
    """Weight decay on matrices only: biases, norms and embeddings get none."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lowered = name.lower()
        skip = param.ndim < 2 or any(p in lowered for p in patterns)
        (no_decay if skip else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_model(cfg: RunConfig) -> PretrainModel:
    objective = build_objective(cfg.model, cfg.objective, seed_for(cfg.training.seed, OBJECTIVE))
    return PretrainModel(WavLMEncoder(cfg.model), objective)


class _NotStartedScheduler(logging.Filter):
    """Drops DeepSpeed's "get learning rate from scheduler before it has started": its
    warmup schedulers call their own get_lr() in __init__ (iteration -1) to set lr 0, which
    is exactly what a linear warmup from ratio 0 wants; once per rank, never trouble."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "before it has started" not in record.getMessage()


def build_engine(cfg: RunConfig, ds_config: dict, rank: int) -> Any:
    model = build_model(cfg)
    quiet = _NotStartedScheduler()
    ds_logger = logging.getLogger("DeepSpeed")
    ds_logger.addFilter(quiet)
    try:
        engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=param_groups(model, cfg.training.no_decay_patterns),
            config=ds_config)
    finally:
        ds_logger.removeFilter(quiet)
    shm.release_at_exit()  # deepspeed.initialize may have joined the process group itself
    engine.checkpoint_engine = SafeCheckpointEngine(engine._config, rank)
    return engine


@dataclass
class MicroBatch:
    """One micro-batch ready for the model (all on the training device).

    features (B, T_in, 80) fp32: input log-Mel (after mixing), normalized over the unmasked
    valid frames, 0 on masked and padded frames; targets (B, T_in, 80) fp32: clean log-Mel
    normalized over all valid frames; frame_lengths (B,); mask (B, T_in) bool (valid rows only);
    audio_seconds: float, valid audio in the batch.
    """
    features: torch.Tensor
    targets: torch.Tensor
    frame_lengths: torch.Tensor
    mask: torch.Tensor
    audio_seconds: float
    extras: dict[str, torch.Tensor] | None = None  # e.g. "labels" (B, T_enc) for k-means


def draw_mask(cfg: RunConfig, frame_lengths: torch.Tensor, T: int,
              gen: torch.Generator) -> torch.Tensor:
    m = cfg.masking
    if m.style == "exact":
        return span_mask(frame_lengths, T, ratio=m.mask_ratio, span=m.mask_span_frames,
                         generator=gen)
    return fairseq_span_mask(frame_lengths, T, mask_prob=m.mask_ratio,
                             mask_length=m.mask_span_frames, min_masks=m.min_masks, generator=gen)


def prepare_micro(batch: dict, cfg: RunConfig, device: torch.device, step: int, micro: int,
                  rank: int, train: bool = True, noise: dict | None = None) -> MicroBatch:
    """Audio batch (+ optional noise batch for mixing) -> features, clean targets and mask,
    computed on the device.

    The mask is drawn first (it depends only on the frame counts), so that nothing the
    model reads depends on masked audio: targets are the clean log-Mel normalized over all
    valid frames (the source document's per-segment normalization); the input is
    normalized with statistics of the unmasked valid frames only, and zero elsewhere; the
    mixing gain comes from the samples unmasked frames' windows read. The same holds for
    the fixed-mask evaluation (train=False: no mixing). tests/unit/test_no_leak.py checks
    it from the waveform.
    """
    audio = batch["audio"].to(device, non_blocking=True)  # (B, S) fp32
    lengths = batch["lengths"].to(device, non_blocking=True)  # (B,)
    valid = batch["valid"].to(device, non_blocking=True)  # (B,) bool
    mode = cfg.data.logmel_mode
    raw, frame_lengths = log_mel(audio, lengths, mode=mode, normalize=False)  # (B, T_in, 80)
    targets = normalize_per_segment(raw, frame_lengths)
    T = raw.shape[1]
    stream = (MASK, step, micro, rank) if train else (EVAL_MASK, step, micro, rank)
    mask = draw_mask(cfg, frame_lengths, T, make_generator(device, cfg.training.seed, *stream))
    mask = mask & valid[:, None]
    visible = (torch.arange(T, device=device) < frame_lengths[:, None]) & ~mask  # (B, T_in)
    if train and cfg.data.mix_prob > 0:
        noise_pair = None if noise is None else (noise["audio"].to(device),
                                                 noise["lengths"].to(device))
        mixed = mix_utterances(audio, lengths, make_generator(device, cfg.training.seed, step,
                                                              micro, rank, MIX), cfg.data,
                               noise=noise_pair,
                               power_samples=window_samples(visible, lengths, audio.shape[1], mode))
        raw, _ = log_mel(mixed, lengths, mode=mode, normalize=False)
    features = normalize_per_segment(raw, frame_lengths, include=visible)
    seconds = float(batch["lengths"][batch["valid"]].sum()) / 16000.0  # host tensors: no sync
    extras = {"labels": batch["labels"].to(device)} if "labels" in batch else None
    return MicroBatch(features, targets, frame_lengths, mask, seconds, extras)


def noise_loader(cfg: RunConfig, batch_size: int, rank: int, world: int) -> TrainLoader | None:
    """An infinite stream of noise crops for mixing (data.noise_shards), or None."""
    if not cfg.data.noise_shards or cfg.data.mix_prob == 0:
        return None
    # Noise has no frame labels: with data.label_member kept, every noise sample would be
    # skipped and the infinite stream would never yield a batch.
    noise_cfg = dataclasses.replace(cfg.data, sources=(SourceConfig("noise", cfg.data.noise_shards),),
                                    resampled=True, num_workers=0, min_duration_s=0.1, mix_prob=0.0,
                                    label_member="", label_sidecar_dir="")
    return TrainLoader(noise_cfg, batch_size, rank, world, seed_for(cfg.training.seed, NOISE))


def global_sum(values: list[torch.Tensor | float], device: torch.device | str = "cpu"
               ) -> torch.Tensor:
    """All-reduce (sum) a few scalars in one collective; returns a 1-D fp64 tensor.

    `device` must be one the process group can reduce on (the engine's device).
    """
    packed = torch.stack([torch.as_tensor(v).detach().to(device, torch.float64).reshape(())
                          for v in values])
    if dist.is_initialized():
        dist.all_reduce(packed)
    return packed


def injected_poison(step: int, rank: int) -> float | None:
    """Fault injection for the numerics tests: the factor (nan or inf) to multiply this
    rank's loss by at this step, or None. Spec: "<step>@<rank>[:inf],..." (default nan)."""
    for item in filter(None, os.environ.get(NAN_ENV, "").split(",")):
        where, _, kind = item.partition(":")
        if where == f"{step}@{rank}":
            return float(kind or "nan")
    return None

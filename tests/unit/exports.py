"""Tiny exports (model.safetensors + config.json) for the interop tests: the debug preset
with every parameter perturbed, so that no bias is zero and no LayerNorm is the identity."""
from __future__ import annotations

from pathlib import Path

import torch

from wavlm_ds.config import DataConfig, RunConfig
from wavlm_ds.model import WavLMEncoder
from wavlm_ds.pretrained import save_export


def tiny_export(out: Path, logmel_mode: str = "htk", seed: int = 0) -> Path:
    cfg = RunConfig(data=DataConfig(logmel_mode=logmel_mode))
    torch.manual_seed(seed)
    encoder = WavLMEncoder(cfg.model)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return save_export(out, {f"encoder.{k}": v for k, v in encoder.state_dict().items()}, cfg)


def speech_batch(seed: int = 0, lengths: tuple[int, ...] = (16000, 9123, 4000)
                 ) -> list[torch.Tensor]:
    """Waveforms with a little structure (chirps plus noise), different lengths."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        t = torch.arange(n) / 16000
        chirp = 0.3 * torch.sin(2 * torch.pi * (200 + 300 * t) * t)
        out.append(chirp + 0.05 * torch.randn(n, generator=g))
    return out

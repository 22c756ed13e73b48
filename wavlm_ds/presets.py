"""Model presets, as small functions; `python -m wavlm_ds.presets` prints their table.

Each preset builds on the one before it (fairseq2 style). Parameter counts come from the
analytic count of wavlm_ds/model/flops.py (tested equal to the module's numel), so this
module never builds the model.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from wavlm_ds.model.config import ModelConfig
from wavlm_ds.model.flops import parameter_count


def debug() -> ModelConfig:
    """2 tiny layers: seconds on CPU, for unit tests."""
    return ModelConfig(preset="debug")


def base() -> ModelConfig:
    """WavLM Base shape: 12 x 768, 12 heads, FFN 3072 (~95M)."""
    return dataclasses.replace(
        debug(), preset="base", frontend_dim=512, model_dim=768, num_layers=12, num_heads=12,
        ffn_dim=3072, conv_pos_kernel=128, conv_pos_groups=16)


def large() -> ModelConfig:
    """WavLM Large shape: 24 x 1024, 16 heads, FFN 4096 (~316M)."""
    return dataclasses.replace(base(), preset="large", model_dim=1024, num_layers=24,
                               num_heads=16, ffn_dim=4096)


def large_plus() -> ModelConfig:
    """WavLM-Large+: deeper (30 blocks) and wider (1280) than Large, ~600M parameters."""
    return dataclasses.replace(large(), preset="large_plus", frontend_dim=1024,
                               model_dim=1280, num_layers=30, num_heads=20, ffn_dim=5120)


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "debug": debug, "base": base, "large": large, "large_plus": large_plus}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


def preset_table() -> list[dict]:
    """Layers, width, heads, FFN and parameter count of each preset."""
    rows = []
    for name, make in PRESETS.items():
        cfg = make()
        rows.append({"preset": name, "layers": cfg.num_layers, "width": cfg.model_dim,
                     "heads": cfg.num_heads, "ffn": cfg.ffn_dim, "params": parameter_count(cfg)})
    return rows


if __name__ == "__main__":
    print("| preset | layers | width | heads | FFN | parameters |\n|---|---|---|---|---|---|")
    for r in preset_table():
        print(f"| {r['preset']} | {r['layers']} | {r['width']} | {r['heads']} | {r['ffn']} | "
              f"{r['params']:,} |")

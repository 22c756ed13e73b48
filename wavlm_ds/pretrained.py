"""Exported encoders: `model.safetensors` + `config.json`, and `load_pretrained(dir)`.

An export holds every parameter of the pretraining module in fp32 (`encoder.*` and the
objective's `objective.*`) plus the resolved run config, so downstream tools rebuild the
encoder without DeepSpeed and without pickle.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from wavlm_ds.config import ConfigError, RunConfig, from_dict, to_dict
from wavlm_ds.model import WavLMEncoder

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_export(out_dir: Path, state_dict: dict[str, torch.Tensor], cfg: RunConfig) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in state_dict.items()}
    save_file(tensors, str(out_dir / WEIGHTS))
    (out_dir / CONFIG).write_text(json.dumps(to_dict(cfg), indent=2))
    return out_dir


def load_pretrained(export_dir: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[WavLMEncoder, RunConfig]:
    """Rebuild the encoder of an export (eval mode, fp32). Errors name the file and key."""
    export_dir = Path(export_dir)
    for name in (WEIGHTS, CONFIG):
        if not (export_dir / name).is_file():
            raise FileNotFoundError(f"{export_dir / name} is missing; make an export with "
                                    "`python tools/export.py model <checkpoint> --out <dir>`")
    cfg = from_dict(RunConfig, json.loads((export_dir / CONFIG).read_text()), str(export_dir / CONFIG))
    weights = load_file(str(export_dir / WEIGHTS))
    encoder_sd = {k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")}
    encoder = WavLMEncoder(cfg.model)
    missing, unexpected = encoder.load_state_dict(encoder_sd, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{export_dir}: weights do not match {CONFIG} (model.preset="
                          f"{cfg.model.preset}): missing {missing[:5]}, unexpected {unexpected[:5]}")
    return encoder.to(device).eval(), cfg

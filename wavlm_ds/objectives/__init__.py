"""Pretraining objectives behind one interface, chosen by `objective.name` in the run YAML."""
from __future__ import annotations

from wavlm_ds.config import ModelConfig, ObjectiveConfig
from wavlm_ds.objectives.base import Objective, ObjectiveOutput, PretrainModel


def build_objective(model_cfg: ModelConfig, cfg: ObjectiveConfig) -> Objective:
    if cfg.name == "reconstruction":
        from wavlm_ds.objectives.reconstruction import MaskedReconstruction
        return MaskedReconstruction(model_cfg, cfg)
    raise ValueError(f"objective.name={cfg.name!r} is not implemented yet; "
                     "use 'reconstruction'")


__all__ = ["Objective", "ObjectiveOutput", "PretrainModel", "build_objective"]

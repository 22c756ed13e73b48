"""Pretraining objectives behind one interface, chosen by `objective.name` in the run YAML."""
from __future__ import annotations

from wavlm_ds.config import ModelConfig, ObjectiveConfig
from wavlm_ds.objectives.base import Objective, ObjectiveOutput, PretrainModel


def build_objective(model_cfg: ModelConfig, cfg: ObjectiveConfig, seed: int) -> Objective:
    """The objective named in the run YAML; `seed` draws frozen state (same on all ranks)."""
    if cfg.name == "reconstruction":
        from wavlm_ds.objectives.reconstruction import MaskedReconstruction
        return MaskedReconstruction(model_cfg, cfg)
    if cfg.name == "best_rq":
        from wavlm_ds.objectives.best_rq import BestRQ
        return BestRQ(model_cfg, cfg, seed)
    if cfg.name == "kmeans":
        from wavlm_ds.objectives.kmeans import KMeansTargets
        return KMeansTargets(model_cfg, cfg)
    raise ValueError(f"objective.name={cfg.name!r} is unknown; use reconstruction, best_rq "
                     "or kmeans")


__all__ = ["Objective", "ObjectiveOutput", "PretrainModel", "build_objective"]

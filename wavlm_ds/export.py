"""Exports of a DeepSpeed ZeRO checkpoint: the encoder, a transformers directory, a universal
checkpoint (tools/export.py is the CLI).

`export_model` consolidates the ZeRO shards with DeepSpeed's zero_to_fp32 API into
`model.safetensors` + `config.json` (read back by `wavlm_ds.pretrained.load_pretrained`);
`export_hf_from` writes the transformers directory (wavlm_ds/hub/hf_export.py);
`export_universal` runs ds_to_universal so a run can resume on another GPU count. Every
file is read with weights_only=True (wavlm_ds.checkpoint.forced_safe_loads).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from wavlm_ds.checkpoint import (MANIFEST, UNIVERSAL_STATE, CheckpointManager, forced_safe_loads,
                                 safe_load, verify_checkpoint)
from wavlm_ds.config import RunConfig, from_dict
from wavlm_ds.pretrained import save_export


class ExportError(ValueError):
    """No usable checkpoint at the given path; the message says what is wrong with it."""


def resolve_checkpoint(path: Path) -> Path:
    """A run dir, a checkpoint root or a step dir -> a verified step dir."""
    for root in (path / "checkpoints", path):
        if root.is_dir() and not (root / MANIFEST).exists():
            tag = CheckpointManager(root, 0, 1, 1).find_latest_valid()
            if tag:
                return root / tag
    problem = verify_checkpoint(path)
    if problem:
        raise ExportError(problem)
    return path


def export_model(ckpt_dir: Path, out: Path) -> Path:
    """ZeRO shards -> model.safetensors + config.json (DeepSpeed's zero_to_fp32)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    model_state = safe_load(next(ckpt_dir.glob("mp_rank_*_model_states.pt")))
    cfg = from_dict(RunConfig, model_state["run_config"], f"{ckpt_dir} (run_config)")
    with forced_safe_loads():
        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir.parent), tag=ckpt_dir.name)
    return save_export(out, state, cfg)


def export_hf_from(src: Path, out: Path) -> Path:
    """An export dir, or a run/checkpoint dir (exported to a temporary dir first)."""
    from wavlm_ds.hub.hf_export import export_hf
    if (src / "model.safetensors").is_file():
        return export_hf(src, out)
    with tempfile.TemporaryDirectory(prefix="wavlm_hf_export_") as tmp:
        return export_hf(export_model(resolve_checkpoint(src), Path(tmp)), out)


def export_universal(ckpt_dir: Path, out: Path) -> Path:
    """DeepSpeed's ds_to_universal, then the trainer's position (written last: the commit)."""
    from deepspeed.checkpoint import ds_to_universal
    args = argparse.Namespace(input_folder=str(ckpt_dir), output_folder=str(out), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True,
                              inject_missing_state=True)
    with forced_safe_loads():
        ds_to_universal.main(args)
    state = safe_load(ckpt_dir / "trainer_state_rank00000.pt")
    (out / UNIVERSAL_STATE).write_text(json.dumps({  # written last: the conversion's commit
        "step": state["step"], "epoch": state["data"]["epoch"],
        "skipped_total": state["skipped_total"], "source": str(ckpt_dir)}))
    return out

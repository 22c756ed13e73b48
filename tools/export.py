"""Export a DeepSpeed ZeRO checkpoint, or convert it to a universal checkpoint.

usage: python tools/export.py model RUN_DIR_OR_CHECKPOINT --out DIR
       python tools/export.py hf EXPORT_OR_CHECKPOINT --out DIR
       python tools/export.py universal CHECKPOINT --out DIR

`model` consolidates the ZeRO shards with DeepSpeed's zero_to_fp32 API into
`model.safetensors` + `config.json` (load with `wavlm_ds.pretrained.load_pretrained`).
`hf` writes a transformers directory (remote code, config.json, model.safetensors,
preprocessor_config.json): `AutoModel.from_pretrained(DIR, trust_remote_code=True)` takes
16 kHz waveforms (see wavlm_ds/hub/hf/modeling_wavlm_ds.py).
`universal` runs DeepSpeed's ds_to_universal so a run can resume on another GPU count.
All files are read with weights_only=True (see wavlm_ds.checkpoint.forced_safe_loads).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from wavlm_ds.checkpoint import (MANIFEST, UNIVERSAL_STATE, CheckpointManager, forced_safe_loads,
                                 safe_load, verify_checkpoint)
from wavlm_ds.config import RunConfig, from_dict
from wavlm_ds.pretrained import save_export


def resolve_checkpoint(path: Path) -> Path:
    """A run dir, a checkpoint root or a step dir -> a verified step dir."""
    for root in (path / "checkpoints", path):
        if root.is_dir() and not (root / MANIFEST).exists():
            tag = CheckpointManager(root, 0, 1, 1).find_latest_valid()
            if tag:
                return root / tag
    problem = verify_checkpoint(path)
    if problem:
        raise SystemExit(f"export: {problem}")
    return path


def export_model(ckpt_dir: Path, out: Path) -> Path:
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


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("kind", choices=["model", "hf", "universal"])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.kind == "hf":
        out = export_hf_from(args.checkpoint, args.out)
        print(json.dumps({"source": str(args.checkpoint), "export": str(out), "kind": "hf"}))
        return 0
    ckpt_dir = resolve_checkpoint(args.checkpoint)
    out = (export_model if args.kind == "model" else export_universal)(ckpt_dir, args.out)
    print(json.dumps({"checkpoint": str(ckpt_dir), "export": str(out), "kind": args.kind}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

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
from pathlib import Path

from wavlm_ds.export import (ExportError, export_hf_from, export_model, export_universal,
                             resolve_checkpoint)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("kind", choices=["model", "hf", "universal"])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        if args.kind == "hf":
            out = export_hf_from(args.checkpoint, args.out)
            print(json.dumps({"source": str(args.checkpoint), "export": str(out), "kind": "hf"}))
            return 0
        ckpt_dir = resolve_checkpoint(args.checkpoint)
    except ExportError as err:
        print(f"export: {err}", file=sys.stderr)
        return 1
    out = (export_model if args.kind == "model" else export_universal)(ckpt_dir, args.out)
    print(json.dumps({"checkpoint": str(ckpt_dir), "export": str(out), "kind": args.kind}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Draw loss, learning-rate and throughput curves of a run to a PNG.

usage: python tools/plot_run.py RUN_DIR [--out RUN_DIR/curves.png]

Reads RUN_DIR/metrics.jsonl (written by train.py on rank 0).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_metrics(run_dir: Path) -> dict[str, list[dict]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"plot_run: {path} not found (is {run_dir} a train.py run dir?)")
    rows: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["split"], []).append(row)
    return rows


def plot(run_dir: Path, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    train, valid = rows.get("train", []), rows.get("valid", [])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    steps = [r["step"] for r in train]
    axes[0].plot(steps, [r["loss"] for r in train], label="train", lw=0.8)
    if valid:
        vsteps = [r["step"] for r in valid]
        for key, style in (("loss", "o-"), ("baseline_zero", "--"), ("baseline_interp", ":")):
            axes[0].plot(vsteps, [r[key] for r in valid], style, label=f"valid {key}")
    axes[0].set(title="masked reconstruction loss", xlabel="optimizer step")
    axes[0].legend()
    axes[1].plot(steps, [r["lr"] for r in train])
    axes[1].set(title="learning rate", xlabel="optimizer step")
    axes[2].plot(steps, [r["audio_s_per_s"] for r in train])
    axes[2].set(title="throughput (s of audio / s, all ranks)", xlabel="optimizer step")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    print(plot(args.run_dir, args.out or args.run_dir / "curves.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Prove the project's own CUDA fast paths on this GPU; record which may run.

usage: python tools/gpu_selftest.py [--only sdpa,flex] [--json out.json] [--dry-run]

Groups (wavlm_ds/ops/gpu_selftest.py says what each checks): `sdpa` (parity against an fp32
oracle, timings) and `flex` (FlexAttention parity and timing, the Triton log-Mel kernel, no
host sync, a compiled block); tools/gpu_check.sh runs them as two stages. The JSON is
rewritten after every check; the record (wavlm_ds/ops/gpu_gate.py) after every verdict.
`--dry-run` runs the CPU parts at tiny sizes (what CI checks); without CUDA nothing is
enabled and no record is written. Exit code 1 if a check failed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wavlm_ds.ops.gpu_selftest import GROUPS, run_selftest


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated, of {GROUPS}")
    p.add_argument("--json", type=Path)
    p.add_argument("--dry-run", action="store_true", help="CPU parts only, tiny sizes")
    args = p.parse_args(argv)
    report = run_selftest(tuple(args.only.split(",")), args.json, tiny=args.dry_run)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

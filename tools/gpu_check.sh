#!/usr/bin/env bash
# The GPU check: one command that measures on one CUDA GPU what a CPU cannot.
#
# usage: tools/gpu_check.sh OUT_DIR [--dry-run]
#
# Stages, limits, budget and the files it leaves in OUT_DIR (gpu_check.json to read first,
# gpu_check.log, the self-test record): wavlm_ds/bench/gpu_check.py; the one device call
# that runs it: docs/gpu_check.md. --dry-run runs every stage at tiny sizes on the CPU (CI).
# $PYTHON (default python3) must have torch; the rest comes from .whl/ (make wheelhouse).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m wavlm_ds.bench.gpu_check "$@"

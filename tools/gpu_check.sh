#!/usr/bin/env bash
# The GPU check: one command that measures on one CUDA GPU what a CPU cannot.
#
# usage: tools/gpu_check.sh OUT_DIR [--dry-run]
#
# Sized for a 15-minute device lease: under 9 minutes on one GPU, FusedAdam's JIT build
# included (TORCH_CUDA_ARCH_LIST is set to this GPU's architecture, so nvcc builds one
# target). Stages run in order of value, each under its own time limit, and each writes its
# JSON under OUT_DIR as it ends, so a cut run still brings back the first ones:
#   1 selftest   tools/gpu_selftest.py: sdpa/flex parity (outputs + 5 gradients) at T in
#                {256, 800, 1000} with padding, compiled block vs eager, Triton vs torch
#                log-Mel, sync-debug mode, timings; pass/fail per op
#   2 eager      tools/bench_throughput.py, large_plus, micro 4 x 16 s, ZeRO-2 + bf16 +
#                FusedAdam, MFU vs the measured bf16 matmul peak and the datasheet peak
#   3 compiled   the same with model.compile: true
#   4 sweep      eager, micro 2 and 8
#   5 ops        tools/bench_ops.py --device cuda
# OUT_DIR/stages.jsonl says how each stage ended (exit code, seconds).
#
# The GPU machine has torch + triton and no network: the wheels it lacks come from .whl/
# (`make wheelhouse` here), installed with pip --no-index --target only for the modules
# that do not import there. --dry-run runs every stage at tiny sizes on CPU with this
# machine's Python (what CI checks): no install, no nvcc.
set -uo pipefail
OUT=${1:?usage: tools/gpu_check.sh OUT_DIR [--dry-run]}
DRY=${2:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1
export WAVLM_DS_SELFTEST_RECORD="$OUT/gpu_selftest_record.json"
: > "$OUT/stages.jsonl"

SCALE=1  # time limits are the GPU's; a dry run on a small shared CPU gets more
[ "$DRY" = "--dry-run" ] && SCALE=5

stage() {  # stage NAME LIMIT_S COMMAND...: run, log, record exit code and seconds
  local name=$1 limit=$(( $2 * SCALE )) t0 rc
  shift 2
  echo "== $name (limit ${limit}s): $*"
  t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  printf '{"stage": "%s", "rc": %d, "seconds": %d}\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" \
    >> "$OUT/stages.jsonl"
  tail -n 25 "$OUT/$name.log"
  return 0
}

install_missing() {  # wheels from .whl for the modules that do not import here
  local site=/tmp/wavlm_ds_site wheels=() pair module pattern
  for pair in deepspeed:deepspeed hjson:hjson pydantic:pydantic pydantic_core:pydantic_core \
              annotated_types:annotated_types typing_inspection:typing_inspection \
              braceexpand:braceexpand soundfile:soundfile cffi:cffi \
              pycparser:pycparser fsspec:fsspec cpuinfo:py_cpuinfo msgpack:msgpack \
              einops:einops yaml:PyYAML safetensors:safetensors; do
    module=${pair%%:*}; pattern=${pair#*:}
    if ! "$PY" -c "import $module" 2>/dev/null; then
      wheels+=( $(ls .whl/${pattern}-*.whl .whl/${pattern,,}-*.whl 2>/dev/null | sort -u) )
      # pydantic needs a recent typing_extensions: carry ours beside it
      [ "$module" = pydantic ] && wheels+=( $(ls .whl/typing_extensions-*.whl 2>/dev/null) )
    fi
  done
  if [ ${#wheels[@]} -gt 0 ]; then
    echo "installing ${#wheels[@]} wheel(s) into $site: ${wheels[*]}"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" "${wheels[@]}" || exit 1
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  "$PY" -c "import deepspeed, fsspec, braceexpand, soundfile, pydantic" || { echo "imports still fail"; exit 1; }
}

if [ "$DRY" = "--dry-run" ]; then
  RECIPE=(--config configs/demo.yaml --deepspeed_config ds_configs/cpu_smoke.json
          --set model.num_layers=2 --set model.model_dim=32 --set model.ffn_dim=64
          --set model.frontend_dim=32 --set model.conv_pos_groups=4
          --set data.noise_shards=\"\" --set logging.progress_bar=false)
  SIZE=(--seconds 1 --steps 1 --warmup 1)
  SELFTEST=(--dry-run)
  SWEEP=(--sweep micro=1,2)
  OPS=(--only mask --repeats 2)
else
  install_missing
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || exit 1
  export TORCH_CUDA_ARCH_LIST=$arch TORCH_EXTENSIONS_DIR=/tmp/wavlm_ds_torch_extensions
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
  stage prebuild_ops 140 "$PY" -m wavlm_ds.prebuild_ops
  RECIPE=(--config configs/wavlm_large_plus.yaml --deepspeed_config ds_configs/a100x128_zero2_bf16.json
          --set data.noise_shards=\"\" --set logging.progress_bar=false --measure-peak)
  SIZE=(--seconds 16 --steps 4 --warmup 2)
  SELFTEST=()
  SWEEP=(--sweep micro=2,8)
  OPS=(--device cuda --repeats 10)
fi

stage selftest 90 "$PY" tools/gpu_selftest.py --json "$OUT/selftest.json" "${SELFTEST[@]}"
stage eager 80 "$PY" tools/bench_throughput.py "${RECIPE[@]}" "${SIZE[@]}" --json "$OUT/eager.json"
stage compiled 120 "$PY" tools/bench_throughput.py "${RECIPE[@]}" --set model.compile=true \
  "${SIZE[@]}" --json "$OUT/compiled.json"
stage sweep 60 "$PY" tools/bench_throughput.py "${RECIPE[@]}" "${SIZE[@]}" "${SWEEP[@]}" \
  --json "$OUT/sweep.json"
stage ops 40 "$PY" tools/bench_ops.py "${OPS[@]}" --json "$OUT/ops.json"
echo "== done: $OUT"
cat "$OUT/stages.jsonl"

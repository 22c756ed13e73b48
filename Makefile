# wavlm_ds — every set-up step lives here; CI runs `make test` on a clean clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Cluster users: point this at the index of the torch build that matches their CUDA driver,
# e.g. make setup TORCH_INDEX_URL=https://<mirror>/whl/cu124
TORCH_INDEX_URL ?=
TORCH_PIN := torch==2.11.0 torchaudio==2.11.0
export TORCH_EXTENSIONS_DIR := $(CURDIR)/$(VENV)/torch_extensions
export OMP_NUM_THREADS ?= 1
STAMP := $(VENV)/.installed
SYSPKG_STAMP := $(VENV)/.syspkgs
DEMO_DIR ?= runs/demo

.PHONY: setup syspkgs ops test test-fast docs-check reliability-full demo bench eval compare wheelhouse finetune clean

setup: $(STAMP) $(SYSPKG_STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel

$(STAMP): setup.py | $(VENV)/bin/python
	$(PY) -m pip install $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) $(TORCH_PIN)
	$(PY) -m pip install -e '.[all]'
	touch $@

# espeak-ng + sox synthesize the embedded demo corpus; ninja/g++ build DeepSpeed's ops.
$(SYSPKG_STAMP): | $(VENV)/bin/python
	@missing=""; for b in espeak-ng sox ninja g++; do command -v $$b >/dev/null || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng sox ninja-build g++ >/dev/null; \
	  else \
	    echo "Missing system programs:$$missing. Install them: sudo apt-get install espeak-ng sox ninja-build g++"; exit 1; \
	  fi; \
	fi
	touch $@

# Prebuild DeepSpeed's FusedAdam and shm comm ops into $(TORCH_EXTENSIONS_DIR), so that
# 128 ranks never JIT-compile into one shared cache at start-up. On a GPU node it builds the
# CUDA FusedAdam for that node's GPUs, or for TORCH_CUDA_ARCH_LIST if given
# (make ops TORCH_CUDA_ARCH_LIST=8.0 for A100); on a CPU node the CPU one (docs/gpu_check.md).
ops: setup
	$(PY) -m wavlm_ds.prebuild_ops $(if $(TORCH_CUDA_ARCH_LIST),--arch-list "$(TORCH_CUDA_ARCH_LIST)")

# Unit tests on 2 worker processes (single-threaded each), then the launcher and fault tests
# on 2 workers as well, a test file per worker (its shared reference run stays with it):
# each launch runs 2 ranks, but a launcher test spends much of its time with a core idle
# (launcher start-up, signal grace, rank teardown), so two at a time finish sooner.
test: setup ops
	$(PY) -m pytest tests/unit -q -ra -n 2
	$(PY) -m pytest tests/integration tests/reliability -q -ra -n 2 --dist loadfile --durations=15

# The fault-injection suite with its full case count (CI runs a reduced count in `make test`);
# writes the table RELIABILITY.md quotes.
reliability-full: setup ops
	rm -f runs/reliability/report.jsonl
	WAVLM_DS_RELIABILITY_FULL=1 WAVLM_DS_RELIABILITY_REPORT=runs/reliability/report.jsonl \
	  $(PY) -m pytest tests/reliability -q -ra

test-fast: setup
	$(PY) -m pytest tests/unit -q -m "not slow"

# Links, make targets, tools, paths and config keys named in README.md, docs/ and the other
# pages exist; docs/config.md matches the config dataclasses (python -m wavlm_ds.config_doc).
docs-check: setup
	$(PY) -m pytest tests/unit/test_docs.py tests/unit/test_import_graph.py -q

demo: setup ops
	$(PY) tools/demo.py --run-dir $(DEMO_DIR)

BENCH_CORPUS := runs/bench/corpus

$(BENCH_CORPUS)/train/index.json: | setup
	$(PY) tools/synth_corpus.py --out $(BENCH_CORPUS) --utterances 200 --noise 24

# Every benchmark of BENCHMARKS.md; each writes JSON beside its printed table.
bench: setup ops $(BENCH_CORPUS)/train/index.json
	$(PY) tools/bench_ops.py --json runs/bench/ops.json
	$(PY) tools/bench_data.py --speech $(BENCH_CORPUS)/train/index.json \
	    --noise $(BENCH_CORPUS)/noise/index.json --json runs/bench/data.json
	$(PY) tools/bench_overhead.py --preset base --seconds 1 --micro 1 --accum 4 --steps 7 \
	    --warmup 2 --threads 2 --json runs/bench/overhead.json

# The three objectives (reconstruction, BEST-RQ, k-means) on the demo corpus, same steps,
# both probes each, trained with 3 probe seeds: the README's comparison table
# (runs/compare/results.md).
compare: setup ops
	$(PY) tools/compare_objectives.py --run-dir runs/compare --corpus $(DEMO_DIR)/corpus

# Downstream probes (ASR WER/CER, F0-RMSE) of the demo export vs the log-Mel baseline.
eval: setup
	@test -f $(DEMO_DIR)/export/model.safetensors || $(MAKE) demo
	$(PY) tools/eval_report.py --upstream $(DEMO_DIR)/export --corpus $(DEMO_DIR)/corpus \
	    --out-dir $(DEMO_DIR)/eval

# Wheels that the lent GPU machine (Python 3.12 with torch + triton, no network) lacks, for
# tools/gpu_check.sh: DeepSpeed built here from its sdist, the rest downloaded for cp312,
# each at the version this venv runs (the list: wavlm_ds/bench/wheelhouse.py's WHEELS, which
# a test keeps equal to this one). Into the ignored .whl/, then checked: under 64 MiB, one
# version of each (see BENCHMARKS.md for its size).
GPU_WHEELS := hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions \
	braceexpand soundfile cffi pycparser
wheelhouse: setup
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
	  $$($(PY) -c "from importlib.metadata import version; print(' '.join(f'{n}=={version(n)}' for n in '$(GPU_WHEELS)'.split()))")
	$(PY) -m wavlm_ds.bench.wheelhouse check .whl && ls .whl

# The label-efficiency table (docs/finetune.md): CTC fine-tuning at 20 / 100 / 300 labelled
# utterances x {the demo export (reconstruction), kmeans_it2 (the best of `make compare`),
# random init} x 3 seeds, 2 worker processes of one thread each, with `make eval`'s
# frozen-probe rows where their results exist (runs/finetune/results.md).
COMPARE_DIR ?= runs/compare
FINETUNE_PROBES ?= $(DEMO_DIR)/eval/results.json $(COMPARE_DIR)/kmeans_it2/eval/results.json
finetune: setup
	@test -f $(DEMO_DIR)/export/model.safetensors || $(MAKE) demo
	@test -f $(COMPARE_DIR)/kmeans_it2/export/model.safetensors || \
	  $(PY) tools/compare_objectives.py --run-dir $(COMPARE_DIR) --corpus $(DEMO_DIR)/corpus \
	    --objectives kmeans,kmeans_it2 --probe-runs 0
	$(PY) tools/finetune_compare.py --upstream reconstruction=$(DEMO_DIR)/export \
	    --upstream kmeans_it2=$(COMPARE_DIR)/kmeans_it2/export --corpus $(DEMO_DIR)/corpus \
	    --probe-results $(FINETUNE_PROBES) --out-dir runs/finetune --jobs 2

clean:
	rm -rf runs

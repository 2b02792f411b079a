#!/usr/bin/env bash
# GPU benchmark: collection tokens/s vs the FLOP floor, Patchscope per vector, steered generation
# tokens/s HF vs vLLM, peak memory — on the embedded pair and on $DIFFLENS_BENCH_MODEL (a local 1B+
# checkpoint directory) if set. Exits 0 with one line on a machine without CUDA.
#
#   bash bench/gpu.sh [--samples 2000] [--rows 64] [--new-tokens 64] [--json out.json]
#   DIFFLENS_PEAK_TFLOPS=989 DIFFLENS_BENCH_MODEL=/models/Llama-3.2-1B-Instruct bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
exec "$PY" bench/gpu.py "$@"

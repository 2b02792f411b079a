#!/usr/bin/env bash
# GPU benchmark: collection tokens/s vs the FLOP floor, Patchscope per vector, steered generation
# tokens/s HF vs vLLM, peak memory — on the embedded pair and on $DIFFLENS_BENCH_MODEL (a local 1B+
# checkpoint directory) if set; then the floor table of every stage (bench/floor.py --device cuda,
# the same table as on a CPU). Exits 0 with one line on a machine without CUDA.
#
#   bash bench/gpu.sh [--samples 2000] [--rows 64] [--new-tokens 64] [--json out.json]
#   DIFFLENS_PEAK_TFLOPS=989 DIFFLENS_BENCH_MODEL=/models/Llama-3.2-1B-Instruct bash bench/gpu.sh
#   DIFFLENS_FLOOR_ARGS="--json floor-gpu.json --samples 2000" DIFFLENS_FLOOR_DTYPE=float32 bash bench/gpu.sh
#   DIFFLENS_FLOOR=0 bash bench/gpu.sh        # without the floor table
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
"$PY" bench/gpu.py "$@"
if [ "${DIFFLENS_FLOOR:-1}" != "0" ] && "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo
  echo "FLOP floor per stage on the GPU (bench/floor.py --device cuda --dtype ${DIFFLENS_FLOOR_DTYPE:-bfloat16})"
  # shellcheck disable=SC2086  # the extra arguments are meant to split
  "$PY" bench/floor.py --device cuda --dtype "${DIFFLENS_FLOOR_DTYPE:-bfloat16}" ${DIFFLENS_FLOOR_ARGS:-}
fi

#!/usr/bin/env bash
# Every CPU benchmark in a few minutes, one table each (full-size figures: see docs/benchmarks.md).
#
#   bash bench/run_all.sh        (from the checkout, with the project's venv active or PYTHON=...)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GB, $(date -u +%F)"
echo "== train step (default model, 160x160), batch 2, whole batch and 2 microbatches"
$PY -m bench.train_step --batch 2 --variants rec,all --microbatches 1,2 --steps 2
echo "== inference, demo pair"
$PY -m bench.search_memory --cases demo
echo "== input pipeline"
$PY -m bench.input_pipeline --pairs 120 --epochs 2
echo "== checkpoint manifest against Orbax's save and restore (paper model's TrainState)"
$PY -m bench.checkpoint_manifest --repeats 2

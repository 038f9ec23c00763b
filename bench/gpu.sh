#!/usr/bin/env bash
# One short GPU check (about 7 minutes on an H100/H200): forward and train-step parity on the GPU
# at float32 "highest" precision, all-losses step time and memory at batch 6/9/11/16 with and
# without the memory knobs, and inference time on the demo pair and a 1280x720 output.
# Train-step variants share one process per line (a start-up each would cost a minute); their
# "dev peak" column is therefore a running maximum, and XLA memory is the per-program figure.
#
#   bash bench/gpu.sh            (from the checkout)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import jax; print('jax', jax.__version__, jax.devices())"

echo "== parity on the GPU (float32, Precision.HIGHEST)"
timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_model_parity.py \
  tests/test_step_parity.py tests/test_microbatches.py 2>&1 | tail -40

echo "== all-losses train step, default model, 160x160 patches"
timeout 150 $PY -m bench.train_step --same_process --batch 6,9,11,16 --variants all --steps 5
timeout 120 $PY -m bench.train_step --same_process --batch 16 \
  --variants all_remat,all_bf16,all_remat_bf16 --steps 5
timeout 60 $PY -m bench.train_step --same_process --batch 16 --variants all --microbatches 2 \
  --steps 5

echo "== inference (default model, random weights)"
timeout 90 $PY -m bench.search_memory --cases demo,720p --chunk 0

#!/usr/bin/env bash
# Everything a GPU session needs to measure, in one call of at most 8 minutes on one device:
#   1. parity on the device: 'exact' against the reference's golden arrays (model, step,
#      microbatches), 'fast' against its documented tolerances (bench.precision_quality --check)
#      and the precision tests;
#   2. one table (one process, bench/gpu_table.py): for 'exact' and 'fast', the paper model's
#      all-losses step at batch 6, 32 and the largest that fits (step time, samples/s, TFLOP/s,
#      % of the device's peak, memory), then demo / 720p / CUFED5 five-reference inference in
#      each search mode (exact, factored, coarse).
# Each part has its own time limit (120 + 45 + 300 s), so a slow part cannot eat the others'
# time; the table prints each row as it finishes, so a part cut short still leaves its rows.
#
#   bash bench/gpu.sh                  (from the checkout, with JAX's CUDA backend installed)
#   SMOKE=1 bash bench/gpu.sh          (the same steps with a tiny model, to check it on a CPU)
#
# XLA's GPU options switched one at a time against its defaults (autotuning, command buffers,
# latency-hiding scheduler), all in one process, as a second call after this one:
#   python -m bench.gpu_table --precisions fast --batches 32 --cases '' --xla_variants \
#     'xla_gpu_autotune_level=0;xla_gpu_enable_command_buffer=;xla_gpu_enable_latency_hiding_scheduler=false'
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
SMOKE=${SMOKE:-}
date -u +"%F %T UTC"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
  || echo "no nvidia-smi"
$PY -c "import jax; print('jax', jax.__version__, jax.devices())"

echo "== parity on the device: 'exact' (golden arrays), 'fast' (documented tolerances)"
if [[ -n $SMOKE ]]; then
  timeout 300 $PY -m pytest -q -p no:cacheprovider tests/test_precision.py 2>&1 | tail -5
else
  timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_model_parity.py \
    tests/test_step_parity.py tests/test_microbatches.py tests/test_precision.py 2>&1 | tail -25
  timeout 45 $PY -m bench.precision_quality --check
fi

echo "== throughput table"
if [[ -n $SMOKE ]]; then
  timeout 900 $PY -m bench.gpu_table --smoke --batches 1,2,max --steps 1 --cases demo \
    --memory_limit_gb 1
else
  timeout 300 $PY -m bench.gpu_table --batches 6,32,max --steps 5
fi
date -u +"%F %T UTC"

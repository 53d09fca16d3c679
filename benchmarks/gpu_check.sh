#!/usr/bin/env bash
# The day a GPU machine is available (<= 8 minutes):  bash benchmarks/gpu_check.sh [OUT]
#
# Prints the devices; then, with a GPU:
#   1. benchmarks/dp_step.py at demo and paper size (non-private vs tfdpgan DP vs stock TF
#      Privacy per critic step),
#   2. a few hundred paper-size private critic steps (patch 96, base 96, batch 64): steps/s
#      plain, with XLA (--jit_compile), with mixed precision (float16 generator), both,
#   3. with 2 or more GPUs, the same under --strategy=mirrored.
# Without a GPU (this CPU machine) it says so and runs the CPU subset at small sizes: the same
# scripts and code paths (dp_step at demo size, critic steps with XLA / bfloat16, mirrored on
# 2 logical CPU devices), so the script itself is tested (tests/test_gpu_check.py).
# GPU_CHECK_QUICK=1 shrinks everything further (for the test). Output also goes to OUT
# (default benchmarks/results/gpu_check.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results/gpu_check.txt}"
mkdir -p "$(dirname "$OUT")"
exec > >(tee "$OUT") 2>&1
export TF_CPP_MIN_LOG_LEVEL=2

echo "== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)  tfdpgan $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
GPUS=$(python -c "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))" 2>/dev/null)
python - <<'EOF' 2>/dev/null
import tensorflow as tf
print("tensorflow", tf.__version__, "| built with CUDA:", tf.test.is_built_with_cuda())
for d in tf.config.list_physical_devices():
    print("device", d.device_type, d.name)
EOF
DP_TMP=$(mktemp -d)
trap 'rm -rf "$DP_TMP"' EXIT

if [ "$GPUS" -gt 0 ]; then
  echo "== $GPUS GPU(s): full check"
  echo "== 1. dp_step.py (demo and paper size)"
  python benchmarks/dp_step.py --steps=5 --stock_timeout=240 --output="$DP_TMP/dp_step.txt" 2>/dev/null | tail -n 12
  echo "== 2. paper-size private critic steps (300 per variant)"
  python benchmarks/critic_speed.py --patch_size=96 --base_filters=96 --batch_size=64 \
    --steps=300 --mixed_dtype=float16 2>/dev/null
  if [ "$GPUS" -ge 2 ]; then
    echo "== 3. mirrored over $GPUS GPUs (paper size)"
    python benchmarks/critic_speed.py --patch_size=96 --base_filters=96 --batch_size=64 \
      --steps=200 --mixed_dtype=float16 --strategy=mirrored 2>/dev/null
  else
    echo "== 3. skipped: one GPU (a mirrored run needs 2)"
  fi
else
  echo "== no GPU found: CPU subset (small sizes; nothing here measures a GPU)"
  if [ "${GPU_CHECK_QUICK:-0}" = "1" ]; then
    DP_ARGS="--demo_patch_size=16 --demo_base_filters=4 --batch_size=8 --steps=1 --stock_steps=1"
    SPEED_ARGS="--patch_size=16 --base_filters=4 --batch_size=16 --steps=10"
  else
    DP_ARGS="--demo_patch_size=32 --demo_base_filters=16 --steps=3 --stock_steps=1"
    SPEED_ARGS="--patch_size=32 --base_filters=16 --batch_size=64 --steps=50"
  fi
  echo "== 1. dp_step.py (demo size only)"
  # shellcheck disable=SC2086
  python benchmarks/dp_step.py --nopaper $DP_ARGS --stock_timeout=120 \
    --output="$DP_TMP/dp_step.txt" 2>/dev/null | tail -n 6
  echo "== 2. private critic steps, plain / XLA / bfloat16 generator / both"
  # shellcheck disable=SC2086
  python benchmarks/critic_speed.py $SPEED_ARGS 2>/dev/null
  echo "== 3. mirrored over 2 logical CPU devices"
  # shellcheck disable=SC2086
  python benchmarks/critic_speed.py $SPEED_ARGS --strategy=mirrored --cpu_devices=2 \
    --variants=plain,xla 2>/dev/null
fi
echo "== gpu_check done"

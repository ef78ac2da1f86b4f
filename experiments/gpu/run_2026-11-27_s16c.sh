#!/bin/bash
# Session 16's third GPU call: bench_gan.py's ratios again on the same code as the first call (e9e6585), five repeats
# each, for a second independent figure. Carry .whl.
#   run: OUT=$OUT bash experiments/gpu/run_2026-11-27_s16c.sh   (about 3.5 minutes, H200)
#   dry run here: DEVICE=cpu TINY=1 bash experiments/gpu/run_2026-11-27_s16c.sh
set -u
OUT=${OUT:-/tmp/gpu_run}
source experiments/gpu/prologue.sh
steps="--steps 200 --warmup 25"
if [ "${TINY:-0}" = 1 ]; then
  steps="--steps 50 --warmup 25"
fi
echo "### bench 64 w25 x5"; timeout 150 python3 benchmarks/bench_gan.py --device "$DEVICE" $s64 $steps --repeats 5 --window 25 2>&1 | grep -E "^device|median|ratio"; el
echo "### bench 32 w25 x5"; timeout 110 python3 benchmarks/bench_gan.py --device "$DEVICE" $s32 $steps --repeats 5 --window 25 2>&1 | grep -E "^device|median|ratio"; el all done

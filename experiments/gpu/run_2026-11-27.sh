#!/bin/bash
# Session 15's second GPU call (the first ran experiments/gpu/bench_step_overhead.sh): where the rest of the step's
# time goes at 64 px (ablation of mmexp's per-step parts, torch.profiler tables), then bench_gan.py's ratios for the
# code as it now is. Carry .whl.   run: OUT=$OUT bash experiments/gpu/run_2026-11-27.sh   (about 5 minutes, H200)
#   dry run here: DEVICE=cpu TINY=1 bash experiments/gpu/run_2026-11-27.sh
set -u
OUT=${OUT:-/tmp/gpu_run}
source experiments/gpu/prologue.sh
q() { grep -vE "Warning|warn|val_dataloader|LeafSpec|^\s*$"; }
echo "### ablation 64"; timeout 150 python3 experiments/gpu/ablate_step.py --device "$DEVICE" $s64 --steps 150 2>&1 | q | tail -9; el
echo "### profile 64"; timeout 100 python3 benchmarks/bench_gan.py --device "$DEVICE" $s64 --profile --steps 50 --warmup 25 2>&1 \
  | grep -vE "Warning|warn|val_dataloader|LeafSpec|GPU available|TPU|LOCAL_RANK|litlogger|stopped|^-+ *-" | cut -c1-200; el
echo "### bench 64 w25"; timeout 100 python3 benchmarks/bench_gan.py --device "$DEVICE" $s64 --steps 200 --warmup 25 --repeats 3 --window 25 2>&1 | grep -E "^device|median|ratio"; el
echo "### bench 32 w25"; timeout 100 python3 benchmarks/bench_gan.py --device "$DEVICE" $s32 --steps 200 --warmup 25 --repeats 3 --window 25 2>&1 | grep -E "^device|median|ratio"; el
echo "### ablation 32"; timeout 120 python3 experiments/gpu/ablate_step.py --device "$DEVICE" $s32 --steps 150 2>&1 | q | tail -9; el all done

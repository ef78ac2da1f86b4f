#!/bin/bash
# Session 16's second GPU call: op-by-op host time and kernel launches of mmexp's GAN step against the Lightning
# floor and the plain loop (experiments/gpu/opdiff.py), at 64 and 32 px. Carry .whl.
#   run: OUT=$OUT bash experiments/gpu/run_2026-11-27_s16b.sh   (about 1.5 minutes, H200)
#   dry run here: DEVICE=cpu TINY=1 bash experiments/gpu/run_2026-11-27_s16b.sh
set -u
OUT=${OUT:-/tmp/gpu_run}
source experiments/gpu/prologue.sh
q() { grep -vE "Warning|warn|val_dataloader|LeafSpec|^\s*$|USDT|GPU available|TPU|LOCAL_RANK|litlogger|stopped|Tensor Cores|workers"; }
echo "### opdiff 64"; timeout 100 python3 experiments/gpu/opdiff.py --device "$DEVICE" $s64 --rows 45 2>&1 | q; el
echo "### opdiff 32"; timeout 100 python3 experiments/gpu/opdiff.py --device "$DEVICE" $s32 --rows 45 2>&1 | q; el all done

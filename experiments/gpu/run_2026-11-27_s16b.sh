#!/bin/bash
# Session 16's second GPU call: op-by-op host time and kernel launches of mmexp's GAN step against the Lightning
# floor and the plain loop (experiments/gpu/opdiff.py), at 64 and 32 px. Carry .whl.
#   run: OUT=$OUT bash experiments/gpu/run_2026-11-27_s16b.sh   (about 1.5 minutes, H200)
#   dry run here: DEVICE=cpu TINY=1 bash experiments/gpu/run_2026-11-27_s16b.sh
set -u
OUT=${OUT:-/tmp/gpu_run}
source experiments/gpu/prologue.sh
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
s64="--batch-size 128 --image-size 64 --base-channels 64"; s32="--batch-size 64 --image-size 32 --base-channels 32"
if [ "${TINY:-0}" = 1 ]; then s64="--batch-size 2 --image-size 32 --base-channels 4 --latent-dim 16 --threads 1"; s32=$s64; fi
q() { grep -vE "Warning|warn|val_dataloader|LeafSpec|^\s*$|USDT|GPU available|TPU|LOCAL_RANK|litlogger|stopped|Tensor Cores|workers"; }
echo "### opdiff 64"; timeout 100 python3 experiments/gpu/opdiff.py --device "$DEVICE" $s64 --rows 45 2>&1 | q; el
echo "### opdiff 32"; timeout 100 python3 experiments/gpu/opdiff.py --device "$DEVICE" $s32 --rows 45 2>&1 | q; el all done

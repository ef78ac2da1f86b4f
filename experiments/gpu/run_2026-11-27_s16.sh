#!/bin/bash
# Session 16's GPU call: bench_gan.py's ratios after manual optimisation's backward and optimizer steps stopped going
# through Lightning's strategy when nothing listens (GenerativeModule.direct_steps), then the ablation with that
# path as one of its variants, then the default run's speed. Carry .whl.
#   run: OUT=$OUT bash experiments/gpu/run_2026-11-27_s16.sh   (about 5.5 minutes, H200)
#   dry run here: DEVICE=cpu TINY=1 bash experiments/gpu/run_2026-11-27_s16.sh
set -u
OUT=${OUT:-/tmp/gpu_run}
source experiments/gpu/prologue.sh
steps="--steps 200 --warmup 25"; asteps="--steps 150"; dflt="trainer.max_epochs=80"
if [ "${TINY:-0}" = 1 ]; then
  steps="--steps 50 --warmup 25"; asteps="--steps 50"; dflt="trainer.max_epochs=1"
fi
q() { grep -vE "Warning|warn|val_dataloader|LeafSpec|^\s*$"; }
echo "### bench 64 w25"; timeout 100 python3 benchmarks/bench_gan.py --device "$DEVICE" $s64 $steps --repeats 3 --window 25 2>&1 | grep -E "^device|median|ratio"; el
echo "### bench 32 w25"; timeout 90 python3 benchmarks/bench_gan.py --device "$DEVICE" $s32 $steps --repeats 3 --window 25 2>&1 | grep -E "^device|median|ratio"; el
echo "### count 32"; timeout 40 python3 benchmarks/bench_gan.py --device "$DEVICE" $s32 --count --steps 50 --warmup 10 2>&1 | grep -E "ATen|^device"; el
echo "### ablation 64"; timeout 110 python3 experiments/gpu/ablate_step.py --device "$DEVICE" $s64 $asteps 2>&1 | q | tail -10; el
echo "### ablation 32"; timeout 80 python3 experiments/gpu/ablate_step.py --device "$DEVICE" $s32 $asteps 2>&1 | q | tail -10; el
echo "### default run"
( while sleep 2; do nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits 2>/dev/null; done > "$OUT/util.txt" ) &
W=$!
timeout 110 python3 -m mmexp logger=csv metrics=none $dflt hydra.run.dir="$OUT/default" 2>&1 | tr '\r' '\n' | grep -E "Epoch [0-9]+: 100%" | tail -2 | cut -c1-120
kill $W 2>/dev/null; el default done
[ -s "$OUT/util.txt" ] && awk '{s+=$1; n++} END {if (n) printf "GPU utilisation: mean %.1f %% over %d samples\n", s/n, n}' "$OUT/util.txt"
rm -rf "$OUT/default/checkpoints"; el all done

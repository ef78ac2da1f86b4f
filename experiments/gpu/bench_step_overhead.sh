#!/bin/bash
# Prepared for the next GPU lease (sessions 9 and 10 had none): benchmarks/bench_gan.py's ratio to a plain loop for
# the code before the session-10 step changes (a copy of commit d4746b0's mmexp package in .gpu/beforepkg, carried:
# `git archive d4746b0 mmexp | tar -x -C .gpu/beforepkg`) and after (this checkout), at 32 px (batch 64, width 32)
# and 64 px (batch 128, width 64), with a GPU sync every iteration (window 1: all host time shows) and every 25
# (the host may queue work ahead, as in training: where a per-step device sync hurts). Then the default run with
# nvidia-smi sampling GPU utilisation. Carry .whl (omegaconf, antlr4, hydra-core, torch-fidelity) and .gpu.
#   run: OUT=$OUT bash experiments/gpu/bench_step_overhead.sh        (about 6 minutes on an H100)
#   dry run here: DEVICE=cpu TINY=1 bash experiments/gpu/bench_step_overhead.sh
set -u
OUT=${OUT:-/tmp/gpu_bench}
R=$PWD
source experiments/gpu/prologue.sh
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
export PYTHONUNBUFFERED=1
b() {  # code(before|after) size window
  local pp=$R; [ "$1" = before ] && pp=$R/.gpu/beforepkg
  local args="--batch-size 64 --image-size 32 --base-channels 32"
  [ "$2" = 64 ] && args="--batch-size 128 --image-size 64 --base-channels 64"
  local n="--steps 200 --warmup 25 --repeats 3"
  [ "${TINY:-0}" = 1 ] && args="--batch-size 2 --image-size 32 --base-channels 4 --latent-dim 16 --threads 1" \
    && n="--steps 50 --warmup 25 --repeats 1"
  echo "### code=$1 size=$2 window=$3"
  PYTHONPATH=$pp:/tmp/site timeout 90 python3 benchmarks/bench_gan.py --device "$DEVICE" $args $n --window "$3" 2>&1 \
    | grep -E "^device|median|ratio"
  el done
}
c() {  # code(before|after): kernel launches and device reads per iteration (no timing)
  local pp=$R; [ "$1" = before ] && pp=$R/.gpu/beforepkg
  echo "### count code=$1"
  PYTHONPATH=$pp:/tmp/site timeout 90 python3 benchmarks/bench_gan.py --device "$DEVICE" --count --steps 50 \
    --warmup 10 2>&1 | grep -E "^device|ATen"
  el done
}
# the realistic window first, so that a lease cut short still returns the figures item 7 asks for
b after 32 25; b before 32 25; b after 64 25; b before 64 25
c before; c after
b after 32 1; b before 32 1
if [ "$DEVICE" = cuda ]; then
  # the default run without FID (its Inception weights do not travel): wall time and GPU busy share
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 100 > "$OUT/util.txt" &
  SMI=$!
  PYTHONPATH=/tmp/site timeout 180 python3 -m mmexp logger=csv metrics=none hydra.run.dir="$OUT/default" 2>&1 \
    | grep -E "max_steps|Error|error" | tail -3
  kill $SMI
  python3 -c "
v = [int(x) for x in open('$OUT/util.txt').read().split() if x.strip().isdigit()]
nz = [x for x in v if x > 0]
print(f'default run: {len(v) / 10:.1f} s sampled, GPU busy {sum(nz) / max(len(nz), 1):.1f}% over the {len(nz) / 10:.1f} s it was non-zero')"
  el default run done
fi
el all done

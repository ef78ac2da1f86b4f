#!/bin/bash
# The script of the second GPU lease (one NVIDIA H100, 2026-11-26): benchmarks/bench_gan.py's ratio to a plain
# loop, for the code before (the repository as it was) and after the training-step overhead cuts (a copy of the
# new mmexp package in .gpu/perfpkg, the new bench_gan.py with --window in .gpu/bench), with a GPU sync every
# iteration (window 1) and every 25 (the host may queue work ahead, as in training). Figures: benchmarks/README.md.
set -u
OUT=${OUT:-/tmp/gpu_out2}; mkdir -p "$OUT"
R=$PWD
exec > >(tee -a "$OUT/log.txt") 2>&1
T0=$(date +%s)
el() { echo "[$(( $(date +%s)-T0 ))s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1
b() {  # code(main|perf) size window
  local pp=$R; [ $1 = perf ] && pp=$R/.gpu/perfpkg
  local args="--batch-size 64 --image-size 32 --base-channels 32"; [ $2 = 64 ] && args="--batch-size 128 --image-size 64 --base-channels 64"
  echo "### code=$1 size=$2 window=$3"
  PYTHONPATH=$pp:/tmp/site timeout 75 python3 .gpu/bench/bench_gan.py --device cuda $args --steps 200 --warmup 25 --window $3 --repeats 3 2>&1 \
    | grep -E "^device|median|ratio"
  el done
}

b main 32 1
b perf 32 1
b main 32 25
b perf 32 25
b main 64 25
b perf 64 25

el all done

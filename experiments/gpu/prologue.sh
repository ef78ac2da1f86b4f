# Sourced by the device scripts of experiments/gpu/ (after they set a default OUT): everything printed also goes to
# $OUT/log.txt, `el` prints the seconds since the start, and on a GPU (DEVICE=cuda, the default) the carried wheels
# in .whl/ (omegaconf, antlr4, hydra-core, torch-fidelity) are installed into /tmp/site, which the scripts put on
# PYTHONPATH; $s64 and $s32 are bench_gan.py's two sizes (tiny CPU stand-ins with TINY=1).
mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
exec > >(tee -a "$OUT/log.txt") 2>&1
T0=$(date +%s)
el() { echo "[$(( $(date +%s)-T0 ))s] $*"; }
if [ "$DEVICE" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
fi
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
# bench_gan.py's two sizes (session 15 on); TINY=1: a tiny CPU stand-in for dry runs
s64="--batch-size 128 --image-size 64 --base-channels 64"; s32="--batch-size 64 --image-size 32 --base-channels 32"
if [ "${TINY:-0}" = 1 ]; then s64="--batch-size 2 --image-size 32 --base-channels 4 --latent-dim 16 --threads 1"; s32=$s64; fi

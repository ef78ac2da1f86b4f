# Sourced by the device scripts of experiments/gpu/ (after they set a default OUT): everything printed also goes to
# $OUT/log.txt, `el` prints the seconds since the start, and on a GPU (DEVICE=cuda, the default) the carried wheels
# in .whl/ (omegaconf, antlr4, hydra-core, torch-fidelity) are installed into /tmp/site, which the scripts put on
# PYTHONPATH.
mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
exec > >(tee -a "$OUT/log.txt") 2>&1
T0=$(date +%s)
el() { echo "[$(( $(date +%s)-T0 ))s] $*"; }
if [ "$DEVICE" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
fi

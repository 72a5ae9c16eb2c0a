#!/usr/bin/env bash
# CPU-scale Omniglot recipe (Conv-4, 28 x 28, classes split by alphabet: the last 5 background
# alphabets are the val classes): meta-train ProtoNet (1 x 1 and 3 x 3 maps) and DeepEMD-FCN
# (3 x 3 map; 20-way 1-shot episodes), then evaluate all on the same fixed 5-way 1-shot and 20-way 1-shot val episodes (unrotated
# characters). Steps whose output exists are skipped; results, logs and TensorBoard scalars land in OUT.
#   bash scripts/recipe_omniglot.sh PATH/omniglot OUT
# Env: EPISODES (default 1000), PYTHON (default .venv/bin/python).
set -euo pipefail
D=${1:?usage: $0 DATA_ROOT OUT}
R=${2:?usage: $0 DATA_ROOT OUT}
PY=${PYTHON:-.venv/bin/python}
E=${EPISODES:-1000}
mkdir -p "$R"
source "$(dirname "$0")/_steps.sh"
for method in protonet deepemd; do
  step "$R/$method/meta/done.json" "train_$method.log" \
    $PY train.py --resume --config "configs/omniglot_$method.yaml" --data-root "$D" --out "$R/$method"
done
# ProtoNet on DeepEMD's backbone (3 x 3 map, average-pooled): the same-backbone comparison
step "$R/protonet_pool3/meta/done.json" train_protonet_pool3.log \
  $PY train.py --resume --config configs/omniglot_protonet.yaml --data-root "$D" --out "$R/protonet_pool3" \
  model.backbone_options.pool_blocks=3
for way in 5 20; do
  step "$R/val_${way}way1shot_$E.json" eval.log \
    $PY eval.py --checkpoint "$R/protonet/meta/best.pt" --split val --way $way --shot 1 --episodes "$E" \
    --write-episodes "$R/val_${way}way1shot_$E.json" --result "$R/protonet_val_${way}way1shot.json" \
    data.options.rotations=false
  for method in deepemd protonet_pool3; do
    step "$R/${method}_val_${way}way1shot.json" eval.log \
      $PY eval.py --checkpoint "$R/$method/meta/best.pt" --split val \
      --episodes-file "$R/val_${way}way1shot_$E.json" --result "$R/${method}_val_${way}way1shot.json" \
      data.options.rotations=false
  done
done
grep -h "accuracy" "$R/eval.log" | tail -n 6
echo "recipe wall time of this invocation: $SECONDS s" | tee -a "$R/times.txt"

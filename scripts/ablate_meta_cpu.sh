#!/usr/bin/env bash
# Meta-training ablations of the 2-core CPU recipe (what limits DeepEMD-FCN on Conv-4):
# each variant meta-trains DeepEMD-FCN from the recipe's pretrained backbone and is evaluated
# on the recipe's fixed 1-shot val manifest, so every row shares backbone and episodes.
#   bash scripts/ablate_meta_cpu.sh PATH/miniimagenet RECIPE_OUT ABLATION_OUT [variant ...]
# RECIPE_OUT holds pretrain/best.pt and val_5way1shot_1000.json (scripts/recipe_miniimagenet_cpu.sh).
# Variants (default: all; 500 episodes each unless said): short (the recipe's meta-training),
# lr2e-3 (4x the learning rate), temp25 (twice the temperature), pyramid (FCN nodes plus pooled
# 2x2 and 1x1), long (1,500 episodes), way10 (10-way training episodes; evaluation stays 5-way),
# dense (10x10 FCN nodes: the last block's max-pool dropped, same pretrained weights), dense_pyramid
# (dense plus pooled 2x2 and 1x1), pyramid_lr2e-3 (pyramid and 4x the learning rate).
set -euo pipefail
D=${1:?usage: $0 DATA_ROOT RECIPE_OUT ABLATION_OUT [variant ...]}
RUN=${2:?usage}; R=${3:?usage}; shift 3
PY=${PYTHON:-.venv/bin/python}
CFG=configs/conv4_miniimagenet.yaml
M1=$(ls "$RUN"/val_5way1shot_*.json | head -n 1)
SHORT=(meta.epochs=10 meta.val_every=2)
declare -A V=(
  [short]=""
  [lr2e-3]="meta.lr=2e-3"
  [temp25]="model.options.temperature=25"
  [pyramid]="model.options.pyramid=[2,1]"
  [long]="meta.epochs=30 meta.val_every=3"
  [way10]="--way 10"
  [dense]="model.backbone_options.pool_blocks=3"
  [dense_pyramid]="model.backbone_options.pool_blocks=3 model.options.pyramid=[2,1]"
  [pyramid_lr2e-3]="model.options.pyramid=[2,1] meta.lr=2e-3"
)
mkdir -p "$R"
source "$(dirname "$0")/_steps.sh"
names=("$@"); [ ${#names[@]} = 0 ] && names=(short long lr2e-3 temp25 pyramid way10)
for name in "${names[@]}"; do
  [ -n "${V[$name]+x}" ] || { echo "unknown variant: $name (expected one of ${!V[*]})" >&2; exit 2; }
  # shellcheck disable=SC2086
  step "$R/$name/meta/best.pt" "meta_$name.log" \
    $PY train.py --config $CFG --way 5 --shot 1 --data-root "$D" --out "$R/$name" \
    meta.pretrained="$RUN/pretrain/best.pt" "${SHORT[@]}" ${V[$name]}
  step "$R/${name}_val_1shot.json" eval.log \
    $PY eval.py --checkpoint "$R/$name/meta/best.pt" --episodes-file "$M1" --split val \
    --result "$R/${name}_val_1shot.json"
done
grep -h "accuracy" "$R"/eval.log | tail -n 12

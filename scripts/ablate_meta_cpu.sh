#!/usr/bin/env bash
# Ablations of the 2-core CPU recipe (what limits DeepEMD-FCN on Conv-4): each variant
# meta-trains DeepEMD-FCN from the recipe's first-phase pretrained backbone (or from a second
# pretraining phase on top of it) and is evaluated on the recipe's fixed 1-shot val manifest, so
# every row shares episodes and, but for the phase, the backbone.
#   bash scripts/ablate_meta_cpu.sh PATH/miniimagenet RECIPE_OUT ABLATION_OUT [variant ...]
# RECIPE_OUT holds pretrain/best.pt and val_5way1shot_1000.json (scripts/recipe_miniimagenet_cpu.sh).
# Every variant starts from the recipe as it was before these ablations (BASE: 500 episodes,
# meta.lr 5e-4, 5x5 FCN nodes, temperature 12.5, no second phase) and changes what its name says:
# short (nothing), lr2e-3 (4x the learning rate), temp25 (twice the temperature), pyramid (FCN
# nodes plus pooled 2x2 and 1x1), long (1,500 episodes), way10 (10-way training episodes;
# evaluation stays 5-way), dense (10x10 FCN nodes: the last block's max-pool dropped, same
# pretrained weights), dense_pyramid (dense plus the pyramid), pyramid_lr2e-3 (both); and on a
# second pretraining phase (2 epochs at 84 px from the first phase's backbone and head, lr 0.01
# cosine to 0): dft (every feature-map cell classified too, pretrain.dense_weight 0.5), ft84 (the
# same phase without the dense term: the control), dft_pyramid_lr2e-3 (dft's backbone with the
# pyramid and 4x the learning rate). Variants named now_* change the recipe as it is now (the
# config's meta-training at the script's commit, RECIPE_OUT's 70-epoch first phase) instead of
# BASE: now_dense6 (the dense phase 6 epochs instead of 2), now_dense_w1 (its dense weight 1.0
# instead of 0.5), now_way10 (10-way training and validation episodes from RECIPE_OUT's
# dense-phase backbone: the checkpoint is selected on 10-way val episodes), now_meta_way10
# (meta.n_way=10: 10-way training episodes, the checkpoint selected on 5-way val episodes as
# evaluated); these are also
# evaluated in 5-shot on RECIPE_OUT's 5-shot manifest (DeepEMD with Structured FC, and SimpleShot
# L2N on a new phase's backbone).
# Env AMP=1: second phases under bfloat16 autocast (run.amp=true), as the recipe runs them on a
# CPU with bf16 instructions. A phase's backbone is also evaluated by
# SimpleShot L2N (nearest centroid of L2-normalised features) on the same episodes.
set -euo pipefail
D=${1:?usage: $0 DATA_ROOT RECIPE_OUT ABLATION_OUT [variant ...]}
RUN=${2:?usage}; R=${3:?usage}; shift 3
PY=${PYTHON:-.venv/bin/python}
CFG=configs/conv4_miniimagenet.yaml
PRE=(); [ "${AMP:-0}" = 1 ] && PRE=(run.amp=true)
M1=$(ls "$RUN"/val_5way1shot_*.json | head -n 1)
M5=$(ls "$RUN"/val_5way5shot_*.json 2>/dev/null | head -n 1 || true)
BASE=(meta.epochs=10 meta.val_every=2 meta.lr=5e-4 "model.options.pyramid=[]")
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
  [dft]=""
  [ft84]=""
  [dft_pyramid_lr2e-3]="model.options.pyramid=[2,1] meta.lr=2e-3"
  [now_dense6]=""
  [now_dense_w1]=""
  [now_way10]="--way 10"
  [now_meta_way10]="meta.n_way=10"
)
declare -A PHASE=([dft]=dft [ft84]=ft84 [dft_pyramid_lr2e-3]=dft [now_dense6]=dft6 [now_dense_w1]=dftw1)  # variant -> its phase
declare -A DENSE_WEIGHT=([dft]=0.5 [ft84]=0 [dft6]=0.5 [dftw1]=1.0)  # phase -> pretrain.dense_weight
declare -A EPOCHS=([dft]=2 [ft84]=2 [dft6]=6 [dftw1]=2)              # phase -> pretrain.epochs
mkdir -p "$R"
source "$(dirname "$0")/_steps.sh"
names=("$@"); [ ${#names[@]} = 0 ] && names=(short long lr2e-3 temp25 pyramid way10 dense dense_pyramid pyramid_lr2e-3 dft ft84 dft_pyramid_lr2e-3)
for name in "${names[@]}"; do
  [ -n "${V[$name]+x}" ] || { echo "unknown variant: $name (expected one of ${!V[*]})" >&2; exit 2; }
  SHOT5=0; [[ -n $M5 && $name == now_* ]] && SHOT5=1   # now_* variants are evaluated in 5-shot too
  B="$RUN/pretrain/best.pt"     # a phase starts from the first phase; now_* without one from RUN's dense phase
  [[ $name == now_* && -z ${PHASE[$name]+x} ]] && B="$RUN/dense/pretrain/best.pt"
  if [ -n "${PHASE[$name]+x}" ]; then
    p=${PHASE[$name]}
    step "$R/$p/pretrain/done.json" "pretrain_$p.log" \
      $PY train.py --resume --config $CFG --stage pretrain --data-root "$D" --out "$R/$p" pretrain.init="$B" \
      pretrain.dense_weight=${DENSE_WEIGHT[$p]} pretrain.epochs=${EPOCHS[$p]} "${PHASE2[@]}" "${PRE[@]}"
    B="$R/$p/pretrain/best.pt"
    simpleshot "$R/${p}_simpleshot_val_1shot.json" "$B" "$M1" 1
    [ $SHOT5 = 1 ] && simpleshot "$R/${p}_simpleshot_val_5shot.json" "$B" "$M5" 5
  fi
  META=("${BASE[@]}"); [[ $name == now_* ]] && META=()
  # shellcheck disable=SC2086
  step "$R/$name/meta/done.json" "meta_$name.log" \
    $PY train.py --resume --config $CFG --way 5 --shot 1 --data-root "$D" --out "$R/$name" \
    meta.pretrained="$B" "${META[@]}" ${V[$name]}
  step "$R/${name}_val_1shot.json" eval.log \
    $PY eval.py --checkpoint "$R/$name/meta/best.pt" --episodes-file "$M1" --split val \
    --result "$R/${name}_val_1shot.json"
  if [ $SHOT5 = 1 ]; then
    step "$R/${name}_val_5shot.json" eval.log \
      $PY eval.py --checkpoint "$R/$name/meta/best.pt" --episodes-file "$M5" --split val --shot 5 \
      --result "$R/${name}_val_5shot.json"
  fi
done
grep -h "accuracy" "$R"/eval.log | tail -n 12

#!/usr/bin/env bash
# The 2-core CPU CUB recipe (Conv-4, configs/conv4_cub.yaml): the miniImageNet CPU recipe's
# stages and settings on CUB-200-2011 in the official layout (bounding-box crops), trained
# on the train classes and selected and evaluated on the val classes. With MINI_RUN=OUT of
# the miniImageNet recipe, its models are evaluated on the same CUB episodes too
# (cross-domain, Chen et al. 2019: no retraining). Each step is skipped when its output
# exists, so the script resumes step by step.
#   bash scripts/recipe_cub_cpu.sh PATH/cub OUT [key=value ...]
# Env: EPISODES_1SHOT (default 1000), EPISODES_5SHOT (default 600), MINI_RUN, PYTHON, SMOKE=1.
CFG=configs/conv4_cub.yaml
DENSE_EPOCHS=${DENSE_EPOCHS:-10}   # the second pretraining phase: ~100 steps, as CUB's epochs are ~10 steps
source "$(dirname "$0")/_recipe_cpu.sh"
if [ -n "${MINI_RUN:-}" ]; then   # cross-domain: miniImageNet models on the same CUB episodes
  CUB=(--dataset cub_official --data-root "$D" data.options.bounding_box=true)
  for shot in 1 5; do
    M=$M1; [ $shot = 5 ] && M=$M5
    for m in deepemd:meta/best.pt protonet:protonet/meta/best.pt; do
      X=(); [ $shot = 5 ] && [ "${m%%:*}" = deepemd ] && X=("${SFC[@]}")
      step "$R/mini_${m%%:*}_val_${shot}shot.json" eval.log \
        $PY eval.py --checkpoint "$MINI_RUN/${m#*:}" "${CUB[@]}" --episodes-file "$M" --split val \
        --shot $shot --result "$R/mini_${m%%:*}_val_${shot}shot.json" "${EVAL[@]}" "${X[@]}" "$@"
    done
  done
fi
finish "CUB val (14 classes), 5-way 1-shot, Conv-4, 2 CPU cores"

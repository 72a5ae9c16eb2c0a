#!/usr/bin/env bash
# Short real-data run of every DeepEMD stage with the default ResNet-12 config on CPU:
# pretrain (a few steps) -> DeepEMD-FCN meta (a few episodes) -> eval 1-shot and 5-shot (SFC),
# then Grid and Sampling meta steps. It checks that everything runs, not accuracy.
#   bash scripts/smoke_miniimagenet.sh PATH/miniimagenet OUT
set -euo pipefail
DATA=${1:?usage: smoke_miniimagenet.sh DATA_ROOT OUT}
OUT=${2:-runs/smoke_miniimagenet}
PY=${PYTHON:-.venv/bin/python}
COMMON=(--data-root "$DATA" --out "$OUT" run.progress=false)
$PY train.py --stage pretrain --max-steps 3 "${COMMON[@]}" pretrain.batch_size=16 pretrain.val_episodes=10
$PY train.py --way 5 --shot 1 --max-steps 3 "${COMMON[@]}" meta.val_episodes=10 \
    meta.pretrained="$OUT/pretrain/best.pt"
$PY eval.py --checkpoint "$OUT/meta/best.pt" --split val --episodes 20 --data-root "$DATA" run.progress=false
$PY eval.py --checkpoint "$OUT/meta/best.pt" --split val --shot 5 --episodes 3 --data-root "$DATA" \
    run.progress=false model.options.sfc_steps=10
for variant in grid sampling; do
  $PY train.py --config "configs/deepemd_$variant.yaml" --way 5 --shot 1 --query 2 --max-steps 2 \
      --data-root "$DATA" --out "$OUT/$variant" run.progress=false meta.val_episodes=3 \
      eval.n_query=2 model.options.patch_size=42 meta.pretrained="$OUT/pretrain/best.pt"
  $PY eval.py --checkpoint "$OUT/$variant/meta/best.pt" --split val --query 2 --episodes 3 \
      --data-root "$DATA" run.progress=false
done

#!/usr/bin/env bash
# The 2-core CPU miniImageNet recipe (Conv-4, configs/conv4_miniimagenet.yaml), tuned for
# time-to-accuracy: pretraining (cosine classifier, progressive resizing 56 -> 70 -> 84 px,
# cosine schedule; then 2 epochs at 84 px with dense classification), then DeepEMD-FCN (exact
# EMD; FCN nodes plus pooled 2x2 and 1x1 levels) and ProtoNet meta-training (10-way episodes)
# from the same backbone, then every method, and both methods on the pretrained backbone alone,
# on the same fixed val episodes (a 1-shot and a 5-shot manifest, episode seed 2: not the seed-1 episodes
# that selected the checkpoints). Each step is skipped when its output exists, so the script
# resumes step by step. Raw results (JSON), logs, TensorBoard scalars, the per-step and total
# wall times (times.txt) and the learning curves (curves.png) land in OUT.
#   bash scripts/recipe_miniimagenet_cpu.sh PATH/miniimagenet OUT [key=value ...]
# Env: EPISODES_1SHOT (default 1000), EPISODES_5SHOT (default 600), PYTHON (default
# .venv/bin/python), SMOKE=1 (a few steps of every stage on tiny images: what the tests run).
CFG=configs/conv4_miniimagenet.yaml
source "$(dirname "$0")/_recipe_cpu.sh"
# what pretraining alone buys: both methods on the pretrained backbone, no meta-training
step "$R/pretrained_deepemd_val_1shot.json" eval.log \
  $PY eval.py --checkpoint "$B" --episodes-file "$M1" --split val \
  --result "$R/pretrained_deepemd_val_1shot.json" "${EVAL[@]}" "$@"
step "$R/pretrained_protonet_val_1shot.json" eval.log \
  $PY eval.py --checkpoint "$B" --episodes-file "$M1" --split val \
  --result "$R/pretrained_protonet_val_1shot.json" model.method=protonet model.options=null "${EVAL[@]}" "$@"
finish "miniImageNet val, 5-way 1-shot, Conv-4, 2 CPU cores" --reference mini

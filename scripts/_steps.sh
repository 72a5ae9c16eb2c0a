# Shared by the recipe scripts (sourced): `step OUTPUT LOG command...` runs the command unless
# OUTPUT exists (so a recipe resumes), appends its output to $R/LOG and its wall time to
# $R/times.txt. A training step's OUTPUT is its stage's done.json (written only when the stage
# has run all its epochs; best.pt exists from the first validation on) and its command has
# --resume, so an interrupted stage continues from its last.pt.
step() {
  local out=$1 logf=$2; shift 2
  if [ -e "$out" ]; then echo "skip: $out exists"; return; fi
  echo "run: $*"
  local t0=$SECONDS
  "$@" run.progress=false >>"$R/$logf" 2>&1
  echo "$((SECONDS - t0)) s: $*" | tee -a "$R/times.txt"
}
# A second pretraining phase on top of a first (recipes and ablations; add pretrain.init,
# pretrain.epochs and pretrain.dense_weight): full-size images, lr 0.01 cosine to 0, validated every epoch.
PHASE2=("pretrain.size_schedule=[]" pretrain.lr=0.01 pretrain.warmup_epochs=0 pretrain.val_every=1)
# SimpleShot L2N (nearest centroid of L2-normalised features) of a pretrained checkpoint on a
# manifest's val episodes: `simpleshot RESULT CHECKPOINT MANIFEST SHOT [key=value ...]` (uses $PY).
simpleshot() {
  local result=$1 checkpoint=$2 manifest=$3 shot=$4; shift 4
  step "$result" eval.log $PY eval.py --checkpoint "$checkpoint" --episodes-file "$manifest" --split val \
    --shot "$shot" --result "$result" model.method=protonet model.options=null model.options.normalize=l2n "$@"
}

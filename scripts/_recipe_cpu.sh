# Shared by the 2-core CPU recipes (sourced with "$@" = DATA_ROOT OUT [key=value ...] after CFG
# is set; sets D and R and leaves the key=value arguments in "$@"): pretraining in two phases
# (the config's schedule, then DENSE_EPOCHS (default 2) epochs at full size that also classify every feature-map cell
# with pretrain.dense_weight DENSE_WEIGHT (default 1.0): the local features DeepEMD matches), DeepEMD-FCN and ProtoNet
# meta-training from that backbone (B), fixed val manifests (1-shot and 5-shot, episode seed 2:
# not the seed-1 episodes that selected the checkpoints), both methods evaluated on them, and
# SimpleShot L2N (nearest centroid of L2-normalised features) on the same backbone and episodes.
# Defines B, EVAL, SFC, M1, M5 and `finish TITLE` for what the recipe adds afterwards.
# Env AMP=auto|1|0 (default auto): both pretraining phases under bfloat16 autocast
# (run.amp=true; ~1.7-1.9x the images/s, benchmarks/README.md) where the CPU has bfloat16
# instructions (avx512_bf16 or amx_bf16; elsewhere bfloat16 is emulated and slower);
# meta-training and evaluation stay in float32. The CPU and the choice go to times.txt.
set -euo pipefail
D=${1:?usage: $0 DATA_ROOT OUT [key=value ...]}
R=${2:?usage: $0 DATA_ROOT OUT [key=value ...]}
shift 2
PY=${PYTHON:-.venv/bin/python}
E1=${EPISODES_1SHOT:-1000}; E5=${EPISODES_5SHOT:-600}
if [ "${SMOKE:-0}" = 1 ]; then   # a few steps of every stage on tiny images: what the tests run
  TRAIN=(--device cpu data.image_size=32 "pretrain.size_schedule=[[0,16],[1,32]]" pretrain.epochs=2
         pretrain.batch_size=8 pretrain.val_every=1 pretrain.val_episodes=2 meta.epochs=2
         meta.episodes_per_epoch=2 meta.val_episodes=2 meta.n_way=4 eval.n_query=2 --query 2)
  EVAL=(--device cpu data.image_size=32 --query 2); SFC=(model.options.sfc_steps=2); E1=3; E5=2
else
  TRAIN=(); EVAL=(); SFC=()
fi
FLAGS=" $( (grep -m1 -ow -E 'avx2|avx512f|avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null || true) | sort -u | tr '\n' ' ')"
AMP_ASKED=${AMP:-auto}
case "$AMP_ASKED" in
  auto) case "$FLAGS" in *" avx512_bf16 "*|*" amx_bf16 "*) AMP=1 ;; *) AMP=0 ;; esac ;;
  0|1) ;;
  *) echo "AMP must be auto, 1 or 0, not '$AMP_ASKED'" >&2; exit 2 ;;
esac
PRE=(); [ "$AMP" = 1 ] && PRE=(run.amp=true)
mkdir -p "$R"
{ echo "cpu: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ //'), $(nproc) cores; flags:$FLAGS"
  echo "pretraining bfloat16 autocast: $AMP (AMP=$AMP_ASKED)"; } >> "$R/times.txt"
source "$(dirname "${BASH_SOURCE[0]}")/_steps.sh"
start=$SECONDS
step "$R/pretrain/done.json" pretrain.log \
  $PY train.py --resume --config $CFG --stage pretrain --data-root "$D" --out "$R" "${PRE[@]}" "${TRAIN[@]}" "$@"
DENSE=(pretrain.init="$R/pretrain/best.pt" pretrain.dense_weight=${DENSE_WEIGHT:-1.0} pretrain.epochs=${DENSE_EPOCHS:-2} "${PHASE2[@]}")
step "$R/dense/pretrain/done.json" pretrain_dense.log \
  $PY train.py --resume --config $CFG --stage pretrain --data-root "$D" --out "$R/dense" "${DENSE[@]}" "${PRE[@]}" "${TRAIN[@]}" "$@"
B="$R/dense/pretrain/best.pt"       # the backbone every method starts from
step "$R/meta/done.json" meta_deepemd.log \
  $PY train.py --resume --config $CFG --way 5 --shot 1 --data-root "$D" --out "$R" \
  meta.pretrained="$B" "${TRAIN[@]}" "$@"
step "$R/protonet/meta/done.json" meta_protonet.log \
  $PY train.py --resume --config $CFG --way 5 --shot 1 --data-root "$D" --out "$R/protonet" \
  model.method=protonet model.options=null meta.pretrained="$B" "${TRAIN[@]}" "$@"
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
step "$R/deepemd_val_5shot.json" eval.log \
  $PY eval.py --checkpoint "$R/meta/best.pt" --episodes-file "$M5" --split val --shot 5 \
  --result "$R/deepemd_val_5shot.json" "${EVAL[@]}" "${SFC[@]}" "$@"
# the nearest-centroid baseline on L2-normalised features (SimpleShot L2N), same backbone
simpleshot "$R/pretrained_simpleshot_l2n_val_1shot.json" "$B" "$M1" 1 "${EVAL[@]}" "$@"
simpleshot "$R/pretrained_simpleshot_l2n_val_5shot.json" "$B" "$M5" 5 "${EVAL[@]}" "$@"

finish() {  # finish TITLE [plot_curves.py options]: total wall time, learning curves, the accuracies
  echo "total: $((SECONDS - start)) s of this invocation" | tee -a "$R/times.txt"
  $PY scripts/plot_curves.py "$R" --out "$R/curves.png" --title "$1" "${@:2}" \
    || echo "plot_curves.py failed (results are unaffected)"
  grep -h "accuracy" "$R"/eval.log | tail -n 12
}

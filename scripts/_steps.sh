# Shared by the recipe scripts (sourced): `step OUTPUT LOG command...` runs the command unless
# OUTPUT exists (so a recipe resumes), appends its output to $R/LOG and its wall time to
# $R/times.txt.
step() {
  local out=$1 logf=$2; shift 2
  if [ -e "$out" ]; then echo "skip: $out exists"; return; fi
  echo "run: $*"
  local t0=$SECONDS
  "$@" run.progress=false >>"$R/$logf" 2>&1
  echo "$((SECONDS - t0)) s: $*" | tee -a "$R/times.txt"
}

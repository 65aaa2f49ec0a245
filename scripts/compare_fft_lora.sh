#!/usr/bin/env bash
# Seed-compatible entry point: compare_fft_lora.sh SEED TASK R [extra peftlab compare args...]
#   e.g. scripts/compare_fft_lora.sh 1 RTE 8
#     -> peftlab compare outputs/FFT/RTE/seed1 outputs/LoRA/RTE/seed1_r8 --out outputs
#   Checks first that both runs finished and were measured; for anything missing it prints the exact
#   command that produces it and exits 2. Missing optional measurements (gradfisher_pre,
#   importance_post) are reported but do not stop the comparison. Output root: $PEFTLAB_OUT (default outputs).
set -euo pipefail
if [ "$#" -lt 3 ]; then
  echo "usage: $(basename "$0") SEED TASK R [extra peftlab compare args...]" >&2
  exit 2
fi
SEED=$1 TASK=$2 RANK=$3
. "$(dirname "${BASH_SOURCE[0]}")/_task.sh"
TASK=$(canonical_task "$TASK")  # run dirs use canonical names: rte -> RTE
shift 3
OUT=${PEFTLAB_OUT:-outputs}
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if command -v peftlab >/dev/null 2>&1; then PEFTLAB=peftlab; else PEFTLAB="$HERE/../.venv/bin/peftlab"; fi
FFT_DIR="$OUT/FFT/$TASK/seed$SEED"
LORA_DIR="$OUT/LoRA/$TASK/seed${SEED}_r${RANK}"
missing=0

check_run() {  # check_run DIR TRAIN_COMMAND
  local dir=$1 train=$2 required=() optional=()
  if [ ! -f "$dir/final_metrics.json" ] || ! grep -q '"finished": *true' "$dir/final_metrics.json"; then
    echo "missing: finished run $dir -> run: $train" >&2
    missing=1
    return
  fi
  for step in importance_pre update; do
    [ -f "$dir/$step.jsonl" ] || required+=("$step")
  done
  for step in gradfisher_pre importance_post; do
    [ -f "$dir/$step.jsonl" ] || optional+=("$step")
  done
  if [ "${#required[@]}" -gt 0 ]; then
    local steps
    steps=$(IFS=,; echo "${required[*]}")
    [ -f "$dir/eval_subset.json" ] || steps="subset,$steps"
    echo "missing: ${required[*]} of $dir -> run: peftlab measure $dir --steps $steps" >&2
    missing=1
  fi
  if [ "${#optional[@]}" -gt 0 ]; then
    echo "note: ${optional[*]} of $dir not measured (comparison goes on without them) -> run: peftlab measure $dir --steps $(IFS=,; echo "${optional[*]}")" >&2
  fi
}

check_run "$FFT_DIR" "peftlab train --task $TASK --method fft --seed $SEED --out $OUT"
check_run "$LORA_DIR" "peftlab train --task $TASK --method lora --seed $SEED --rank $RANK --out $OUT"
if [ "$missing" -ne 0 ]; then
  echo "$(basename "$0"): prerequisites missing (see above); run those commands, then re-run this script" >&2
  exit 2
fi
exec "$PEFTLAB" compare "$FFT_DIR" "$LORA_DIR" --out "$OUT" "$@"

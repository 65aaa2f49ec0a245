#!/usr/bin/env bash
# Dev scores a user can trust: FFT and LoRA r=8 (q,k,v,o, alpha 16) on the packaged all-MiniLM-L6-v2,
# with the `full` preset plus each task's preset (configs/), then one table (`peftlab scores`).
#
#   scripts/scores.sh [TASKS] [SEEDS] [OUT]
#   scripts/scores.sh "RTE SST-2" "1 2 3" outputs      # the README's table (defaults)
#
# Seeds run outermost, so an interrupted sweep has whole seeds; re-running skips finished runs and
# resumes an interrupted one from its last checkpoint.
set -euo pipefail
TASKS=${1:-"RTE SST-2"}
SEEDS=${2:-"1 2 3"}
OUT=${3:-outputs}
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if command -v peftlab >/dev/null 2>&1; then PEFTLAB=peftlab; else PEFTLAB="$HERE/../.venv/bin/peftlab"; fi

preset_of() {  # RTE -> rte, SST-2 -> sst2, STS-B -> stsb
  echo "$1" | tr '[:upper:]' '[:lower:]' | tr -d '-'
}

for SEED in $SEEDS; do
  for TASK in $TASKS; do
    PRESET="full,$(preset_of "$TASK")"
    "$PEFTLAB" train --config "$PRESET" --task "$TASK" --method fft --seed "$SEED" --out "$OUT"
    "$PEFTLAB" train --config "$PRESET" --task "$TASK" --method lora --rank 8 --alpha 16 --targets q,k,v,o \
      --seed "$SEED" --out "$OUT"
  done
done
"$PEFTLAB" scores --out "$OUT"

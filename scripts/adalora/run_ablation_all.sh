#!/usr/bin/env bash
# run_ablation_all.sh TASK SEED [KEY=VALUE | --option ...]: the four signals for one seed, plus the equal-budget
# LoRA reference, then the per-run plots. Finished runs are skipped.
#   e.g. scripts/adalora/run_ablation_all.sh RTE 42   -> outputs/ADALORA/RTE/<signal>/seed42/
# Several seeds and the comparison: scripts/adalora/run_all.sh TASK SEED... or `peftlab adalora compare`.
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: $(basename "$0") TASK SEED [KEY=VALUE | --option ...]" >&2
  exit 2
fi
TASK=$1 SEED=$2
shift 2
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if command -v peftlab >/dev/null 2>&1; then PEFTLAB=peftlab; else PEFTLAB="$HERE/../../.venv/bin/peftlab"; fi
"$PEFTLAB" adalora run --task "$TASK" --signals all --seeds "$SEED" --lora-reference "$@" | while read -r line; do
  echo "$line"
  case "$line" in */ADALORA/*/seed*) if [ -d "$line" ] && [[ "$line" != */lora_reference/* ]]; then
    "$PEFTLAB" adalora plot "$line" >/dev/null; fi ;; esac
done

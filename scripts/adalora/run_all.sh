#!/usr/bin/env bash
# run_all.sh TASK [SEEDS...]: every signal × seed (default seeds 1 2 3), then `peftlab adalora compare` and plots.
#   e.g. scripts/adalora/run_all.sh RTE 1 2 3
set -euo pipefail
if [ "$#" -lt 1 ]; then echo "usage: $(basename "$0") TASK [SEEDS...]" >&2; exit 2; fi
TASK=$1; shift
if [ "$#" -eq 0 ]; then SEEDS=(1 2 3); else SEEDS=("$@"); fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if command -v peftlab >/dev/null 2>&1; then PEFTLAB=peftlab; else PEFTLAB="$HERE/../../.venv/bin/peftlab"; fi
SIGNALS=(baseline_adalora importance_only plasticity_only combo)
for seed in "${SEEDS[@]}"; do
  for signal in "${SIGNALS[@]}"; do
    run_dir=$("$PEFTLAB" adalora run --task "$TASK" --signal "$signal" --seed "$seed" | head -n 1)
    "$PEFTLAB" adalora plot "$run_dir"
  done
done
"$PEFTLAB" adalora compare --task "$TASK" --signals "${SIGNALS[@]}" --seeds "${SEEDS[@]}"

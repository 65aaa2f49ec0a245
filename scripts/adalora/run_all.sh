#!/usr/bin/env bash
# run_all.sh TASK [SEEDS...] [-- KEY=VALUE ...]: every signal × seed (default seeds 1 2 3) plus the equal-budget LoRA
# reference per seed (run_ablation_all.sh), then `peftlab adalora compare`.
#   e.g. scripts/adalora/run_all.sh RTE 1 2 3 -- lr=1e-3 tinit=0.1 tfinal=0.3
set -euo pipefail
if [ "$#" -lt 1 ]; then echo "usage: $(basename "$0") TASK [SEEDS...] [-- KEY=VALUE | --option ...]" >&2; exit 2; fi
TASK=$1; shift
SEEDS=()
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do SEEDS+=("$1"); shift; done
if [ "$#" -gt 0 ]; then shift; fi  # the "--"; the rest goes to every run
if [ "${#SEEDS[@]}" -eq 0 ]; then SEEDS=(1 2 3); fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if command -v peftlab >/dev/null 2>&1; then PEFTLAB=peftlab; else PEFTLAB="$HERE/../../.venv/bin/peftlab"; fi
OUT=()
for ((i = 1; i <= $#; i++)); do if [ "${!i}" = "--out" ]; then j=$((i + 1)); OUT=(--out "${!j}"); fi; done
for seed in "${SEEDS[@]}"; do
  "$HERE/run_ablation_all.sh" "$TASK" "$seed" "$@"
done
"$PEFTLAB" adalora compare --task "$TASK" --seeds "${SEEDS[@]}" "${OUT[@]}"

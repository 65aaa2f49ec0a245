#!/usr/bin/env bash
# Seed-compatible entry point: run_lora.sh SEED TASK R ALPHA [extra peftlab train args...]
#   e.g. scripts/run_lora.sh 1 RTE 8 16        -> peftlab train --method lora --seed 1 --task RTE --rank 8 --alpha 16
set -euo pipefail
if [ "$#" -lt 4 ]; then
  echo "usage: $(basename "$0") SEED TASK R ALPHA [extra peftlab train args...]" >&2
  exit 2
fi
SEED=$1 TASK=$2 RANK=$3 ALPHA=$4
shift 4
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if command -v peftlab >/dev/null 2>&1; then PEFTLAB=peftlab; else PEFTLAB="$HERE/../.venv/bin/peftlab"; fi
exec "$PEFTLAB" train --method lora --seed "$SEED" --task "$TASK" --rank "$RANK" --alpha "$ALPHA" "$@"

#!/usr/bin/env bash
# Seed-compatible entry point: measure_lora.sh SEED TASK R [extra peftlab measure args...]
#   e.g. scripts/measure_lora.sh 1 RTE 8      -> peftlab measure outputs/LoRA/RTE/seed1_r8
#   The output root is $PEFTLAB_OUT (default: outputs), as for run_lora.sh's --out.
set -euo pipefail
if [ "$#" -lt 3 ]; then
  echo "usage: $(basename "$0") SEED TASK R [extra peftlab measure args, e.g. --subset-size 256]" >&2
  exit 2
fi
SEED=$1 TASK=$2 RANK=$3
. "$(dirname "${BASH_SOURCE[0]}")/_task.sh"
TASK=$(canonical_task "$TASK")  # run dirs use canonical names: rte -> RTE
shift 3
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if command -v peftlab >/dev/null 2>&1; then PEFTLAB=peftlab; else PEFTLAB="$HERE/../.venv/bin/peftlab"; fi
exec "$PEFTLAB" measure "${PEFTLAB_OUT:-outputs}/LoRA/$TASK/seed${SEED}_r${RANK}" "$@"

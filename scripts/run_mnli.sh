#!/usr/bin/env bash
# Seed-compatible entry point: run_mnli.sh SEED TASK METHOD [extra peftlab train args...]
#   METHOD as the seed scripts spell it: FFT | LoRA | PEFT-LoRA | AdaLoRA ...  (lower-cased: --method fft, ...)
#   e.g. scripts/run_mnli.sh 1 RTE FFT          -> peftlab train --method fft --seed 1 --task RTE
set -euo pipefail
if [ "$#" -lt 3 ]; then
  echo "usage: $(basename "$0") SEED TASK METHOD(FFT|LoRA|PEFT-LoRA) [extra peftlab train args...]" >&2
  exit 2
fi
SEED=$1 TASK=$2 METHOD=$(printf '%s' "$3" | tr '[:upper:]' '[:lower:]')
shift 3
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if command -v peftlab >/dev/null 2>&1; then PEFTLAB=peftlab; else PEFTLAB="$HERE/../.venv/bin/peftlab"; fi
exec "$PEFTLAB" train --method "$METHOD" --seed "$SEED" --task "$TASK" "$@"

#!/usr/bin/env bash
# Seed-compatible entry point: measure_mnli.sh SEED TASK METHOD [extra peftlab measure args...]
#   METHOD as the seed scripts spell it: FFT | LoRA | PEFT-LoRA (any case); LoRA runs need RANK=<r> in the env
#   e.g. scripts/measure_mnli.sh 1 RTE FFT          -> peftlab measure outputs/FFT/RTE/seed1
#        RANK=8 scripts/measure_mnli.sh 1 RTE LoRA  -> peftlab measure outputs/LoRA/RTE/seed1_r8
#   The output root is $PEFTLAB_OUT (default: outputs).
set -euo pipefail
if [ "$#" -lt 3 ]; then
  echo "usage: $(basename "$0") SEED TASK METHOD(FFT|LoRA|PEFT-LoRA) [extra peftlab measure args...]" >&2
  exit 2
fi
SEED=$1 TASK=$2
. "$(dirname "${BASH_SOURCE[0]}")/_task.sh"
TASK=$(canonical_task "$TASK")  # run dirs use canonical names: rte -> RTE
case "$(printf '%s' "$3" | tr '[:upper:]' '[:lower:]')" in
  fft) RUN="FFT/$TASK/seed$SEED" ;;
  lora) RUN="LoRA/$TASK/seed${SEED}_r${RANK:-8}" ;;
  peft-lora|peft_lora|peftlora) RUN="PEFT-LoRA/$TASK/seed${SEED}_r${RANK:-8}" ;;
  *) echo "$(basename "$0"): unknown METHOD '$3'; use FFT, LoRA or PEFT-LoRA" >&2; exit 2 ;;
esac
shift 3
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if command -v peftlab >/dev/null 2>&1; then PEFTLAB=peftlab; else PEFTLAB="$HERE/../.venv/bin/peftlab"; fi
exec "$PEFTLAB" measure "${PEFTLAB_OUT:-outputs}/$RUN" "$@"

#!/usr/bin/env bash
# Seed-compatible entry point: make_plots.sh SEED TASK [METHOD] [extra peftlab analyze args...]
#   METHOD: FFT (default) | LoRA | PEFT-LoRA (any case) or a label like LoRA_r8; LoRA without _r<R> uses RANK (default 8)
#   e.g. scripts/make_plots.sh 1 RTE            -> peftlab analyze outputs/FFT/RTE/seed1
#        scripts/make_plots.sh 1 RTE LoRA_r16   -> peftlab analyze outputs/LoRA/RTE/seed1_r16
#   The output root is $PEFTLAB_OUT (default: outputs). Writes RUN_DIR/analysis/ (heads.csv, stats.json, figures).
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: $(basename "$0") SEED TASK [METHOD(FFT|LoRA|PEFT-LoRA|LoRA_r8)] [extra peftlab analyze args...]" >&2
  exit 2
fi
SEED=$1 TASK=$2 METHOD=${3:-FFT}
. "$(dirname "${BASH_SOURCE[0]}")/_task.sh"
TASK=$(canonical_task "$TASK")  # run dirs use canonical names: rte -> RTE
shift $(( $# >= 3 ? 3 : 2 ))
case "$METHOD" in
  *_r[0-9]*) BASE=${METHOD%_r*} RANK=${METHOD##*_r} ;;
  *) BASE=$METHOD ;;
esac
case "$(printf '%s' "$BASE" | tr '[:upper:]' '[:lower:]')" in
  fft) RUN="FFT/$TASK/seed$SEED" ;;
  lora) RUN="LoRA/$TASK/seed${SEED}_r${RANK:-8}" ;;
  peft-lora|peft_lora|peftlora) RUN="PEFT-LoRA/$TASK/seed${SEED}_r${RANK:-8}" ;;
  *) echo "$(basename "$0"): unknown METHOD '$METHOD'; use FFT, LoRA, PEFT-LoRA or a label like LoRA_r8" >&2; exit 2 ;;
esac
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if command -v peftlab >/dev/null 2>&1; then PEFTLAB=peftlab; else PEFTLAB="$HERE/../.venv/bin/peftlab"; fi
exec "$PEFTLAB" analyze "${PEFTLAB_OUT:-outputs}/$RUN" "$@"

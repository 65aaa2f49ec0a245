#!/usr/bin/env bash
# run_rte.sh SIGNAL SEED [KEY=VALUE | --option ...]: one AdaLoRA run on RTE
#   e.g. scripts/adalora/run_rte.sh combo 1 tinit=0.1 tfinal=0.3   -> outputs/ADALORA/RTE/combo/seed1/
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_run.sh"
if [ "$#" -lt 2 ]; then run_adalora; fi
run_adalora RTE "$@"

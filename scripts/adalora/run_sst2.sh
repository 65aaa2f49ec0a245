#!/usr/bin/env bash
# run_sst2.sh SIGNAL SEED [KEY=VALUE | --option ...]: one AdaLoRA run on SST-2
#   e.g. scripts/adalora/run_sst2.sh combo 1 tinit=0.1 tfinal=0.3   -> outputs/ADALORA/SST-2/combo/seed1/
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_run.sh"
if [ "$#" -lt 2 ]; then run_adalora; fi
run_adalora SST-2 "$@"

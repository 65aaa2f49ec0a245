#!/usr/bin/env bash
# run_mnli.sh SIGNAL SEED [KEY=VALUE | --option ...]: one AdaLoRA run on MNLI (the AdaLoRA paper's task)
#   e.g. scripts/adalora/run_mnli.sh combo 1   -> outputs/ADALORA/MNLI/combo/seed1/
# MNLI has no local copy in peftlab's offline setup: put glue/MNLI/{train,dev_matched}.tsv under --data-dir /
# PEFTLAB_DATA, or go online with `pip install peftlab[hub]` (loads nyu-mll/glue/mnli). Offline it stops with one
# `error: no MNLI train file ...` line. (scripts/run_mnli.sh, without `adalora/`, is the head study's entry point.)
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_run.sh"
if [ "$#" -lt 2 ]; then run_adalora; fi
run_adalora MNLI "$@"

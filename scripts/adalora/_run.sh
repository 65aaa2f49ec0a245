# Sourced by run_rte.sh / run_sst2.sh: run_adalora TASK SIGNAL SEED [extra KEY=VALUE or options...]
run_adalora() {
  if [ "$#" -lt 3 ]; then
    echo "usage: $(basename "$0") SIGNAL SEED [KEY=VALUE | --option ...]   (SIGNAL: baseline_adalora | importance_only | plasticity_only | combo)" >&2
    exit 2
  fi
  local task=$1 signal=$2 seed=$3
  shift 3
  local here peftlab
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  if command -v peftlab >/dev/null 2>&1; then peftlab=peftlab; else peftlab="$here/../../.venv/bin/peftlab"; fi
  exec "$peftlab" adalora run --task "$task" --signal "$signal" --seed "$seed" "$@"
}

# Sourced by the seed-compatible scripts: canonical_task NAME prints the task's canonical name
# (the directory name `peftlab train` uses), accepting any case and punctuation: rte -> RTE, sst2 -> SST-2.
# The table mirrors peftlab.tasks.registry (tests/test_hardening.py checks that they agree); an
# unknown name is printed unchanged, so peftlab itself reports it.
canonical_task() {
  local key
  key=$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]' | tr -cd 'a-z0-9')
  case "$key" in
    rte) echo RTE ;;
    sst2|sst) echo SST-2 ;;
    mrpc) echo MRPC ;;
    stsb|sts) echo STS-B ;;
    cola) echo CoLA ;;
    qnli) echo QNLI ;;
    qqp) echo QQP ;;
    mnli) echo MNLI ;;
    wnli) echo WNLI ;;
    snli) echo SNLI ;;
    agnews) echo AG-News ;;
    *) printf '%s\n' "$1" ;;
  esac
}

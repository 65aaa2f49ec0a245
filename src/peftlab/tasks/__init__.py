"""Tasks: registry, local TSV/CSV and Hub loaders, examples, metrics — one package, one import point.

    from peftlab.tasks import get_task, load_split, compute_metrics
    spec = get_task("sst2")                      # -> TaskSpec "SST-2"
    dev = load_split(spec, "dev")                # TaskData from $PEFTLAB_DATA/glue/SST-2/dev.tsv
    compute_metrics(spec, predictions, dev.labels)

Canonical task names: RTE, SST-2, MRPC, STS-B, CoLA, QNLI, QQP, MNLI, WNLI, SNLI, AG-News.
Every task metric peftlab reports is computed here (scikit-learn / scipy). One job per module:

    registry.py   TaskSpec per task: file layout, label ids, metric names    (get_task, TASKS)
    local.py      read a GLUE TSV / AG News CSV, `file:line` errors           (read_task_file)
    hub.py        the optional `datasets` loader                             (load_hub_split)
    loading.py    data dir resolution, local-or-Hub choice, AG News holdout  (load_split)
    examples.py   the TaskData container                                     (TaskData)
    metrics.py    task metrics and per-example losses                        (compute_metrics, ...)
"""

from peftlab.tasks.hub import datasets_available, hub_offline, load_hub_split
from peftlab.tasks.loading import (
    ENV_VAR,
    SOURCES,
    SplitLocation,
    data_dir_origin,
    load_split,
    locate_split,
    resolve_data_dir,
)
from peftlab.tasks.local import read_task_file
from peftlab.tasks.metrics import (
    METRICS,
    accuracy,
    compute_metrics,
    f1,
    logits_metric,
    matthews_corr,
    metrics_from_logits,
    pearson,
    per_example_loss,
    spearman,
)
from peftlab.tasks.registry import (
    CLASSIFICATION,
    REGRESSION,
    TASK_NAMES,
    TASKS,
    FileLayout,
    Holdout,
    TaskSpec,
    get_task,
    list_tasks,
    normalize_task_name,
)
from peftlab.tasks.examples import TaskData

__all__ = [
    "CLASSIFICATION", "ENV_VAR", "METRICS", "REGRESSION", "SOURCES", "TASKS", "TASK_NAMES",
    "FileLayout", "Holdout", "SplitLocation", "TaskData", "TaskSpec",
    "accuracy", "compute_metrics", "data_dir_origin", "datasets_available", "f1", "get_task",
    "hub_offline", "list_tasks", "logits_metric", "load_hub_split", "load_split", "locate_split", "matthews_corr",
    "metrics_from_logits", "normalize_task_name", "pearson", "per_example_loss", "read_task_file",
    "resolve_data_dir", "spearman",
]

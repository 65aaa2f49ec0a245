"""Tasks: registry, local TSV/CSV and Hub loaders, metrics — the public import point.

    from peftlab.tasks import get_task, load_split, compute_metrics
    spec = get_task("sst2")                      # -> TaskSpec "SST-2"
    dev = load_split(spec, "dev")                # TaskData from $PEFTLAB_DATA/glue/SST-2/dev.tsv
    compute_metrics(spec, predictions, dev.labels)

Canonical task names: RTE, SST-2, MRPC, STS-B, CoLA, QNLI, QQP, MNLI, WNLI, SNLI, AG-News.
The implementation lives in `peftlab/taskdata/` (one job per module); see `peftlab.taskdata.registry`
for every task's file layout and label ids, and `peftlab.taskdata.loading` for the AG News split.
"""

from peftlab.taskdata.hub import datasets_available, hub_offline, load_hub_split
from peftlab.taskdata.loading import (
    ENV_VAR,
    SOURCES,
    SplitLocation,
    data_dir_origin,
    load_split,
    locate_split,
    resolve_data_dir,
)
from peftlab.taskdata.local import read_task_file
from peftlab.taskdata.metrics import (
    METRICS,
    accuracy,
    compute_metrics,
    f1,
    matthews_corr,
    metrics_from_logits,
    pearson,
    spearman,
)
from peftlab.taskdata.registry import (
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
from peftlab.taskdata.examples import TaskData

__all__ = [
    "CLASSIFICATION", "ENV_VAR", "METRICS", "REGRESSION", "SOURCES", "TASKS", "TASK_NAMES",
    "FileLayout", "Holdout", "SplitLocation", "TaskData", "TaskSpec",
    "accuracy", "compute_metrics", "data_dir_origin", "datasets_available", "f1", "get_task",
    "hub_offline", "list_tasks", "load_hub_split", "load_split", "locate_split", "matthews_corr",
    "metrics_from_logits", "normalize_task_name", "pearson", "read_task_file", "resolve_data_dir",
    "spearman",
]

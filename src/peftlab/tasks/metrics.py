"""Task metrics with scikit-learn / scipy (never `evaluate`: it fetches metric scripts online).

Names: accuracy, f1, matthews_corr, pearson, spearman. Which ones a task reports is in its
TaskSpec (`metric_names`, main metric first). `per_example_loss` gives the unreduced training loss
(cross-entropy / squared error) of every example, for per-example head statistics;
`logits_metric(num_labels)` the (name, fn(logits, labels)) pair head measurements report.
sklearn/scipy/torch are imported inside the functions so that `import peftlab.tasks` stays fast.
"""

from __future__ import annotations

import warnings

import numpy as np

from peftlab.tasks.registry import TaskSpec, get_task
from peftlab.errors import PeftlabError


def accuracy(predictions, labels) -> float:
    """Fraction of exact matches: acc = (1/N) · Σ_i 1[ŷ_i = y_i]."""
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, predictions))


def f1(predictions, labels) -> float:
    """Binary F1 of the positive class (id 1, as in GLUE MRPC/QQP).

    P = TP / (TP + FP), R = TP / (TP + FN), F1 = 2·P·R / (P + R) = 2·TP / (2·TP + FP + FN);
    0.0 when there is no true or predicted positive (TP + FP + FN = 0 counts as 0, not NaN).
    """
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0.0))


def matthews_corr(predictions, labels) -> float:
    """Matthews correlation coefficient (GLUE CoLA), in [-1, 1]; 0.0 when either side is constant.

    Binary: MCC = (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)). sklearn uses the
    multi-class generalisation (Gorodkin 2004), which equals this for two classes.
    """
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, predictions))


def pearson(predictions, labels) -> float:
    """Pearson correlation r = Σ(x−x̄)(y−ȳ) / sqrt(Σ(x−x̄)² · Σ(y−ȳ)²); NaN if either side is constant."""
    from scipy.stats import pearsonr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: undefined -> NaN, reported as NaN, not warned
        return float(pearsonr(np.asarray(predictions, float), np.asarray(labels, float))[0])


def spearman(predictions, labels) -> float:
    """Spearman rank correlation ρ = Pearson r of the ranks (ties get their average rank); NaN if constant."""
    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(np.asarray(predictions, float), np.asarray(labels, float))[0])


METRICS = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews_corr": matthews_corr,
    "pearson": pearson,
    "spearman": spearman,
}


def _to_numpy(values, what: str) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().float().cpu().numpy()
    array = np.asarray(values)
    if array.dtype == object:
        raise PeftlabError(f"{what} must be numbers; convert them to a numeric array first")
    return array


def _check_class_ids(spec: TaskSpec, array: np.ndarray, what: str) -> np.ndarray:
    if array.ndim != 1:
        raise PeftlabError(
            f"{what} for {spec.name} must be a 1-D array of class ids, got shape {array.shape}; "
            "use metrics_from_logits() for [N, num_labels] logits"
        )
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise PeftlabError(f"{what} for {spec.name} must be integer class ids; use metrics_from_logits() for logits")
    array = array.astype(np.int64)
    bad = array[(array < 0) | (array >= spec.num_labels)]
    if bad.size:
        raise PeftlabError(
            f"{what} for {spec.name} hold class id {int(bad[0])} outside 0..{spec.num_labels - 1}; "
            "check that predictions and labels belong to this task"
        )
    return array


def compute_metrics(task: str | TaskSpec, predictions, labels) -> dict[str, float]:
    """Every metric of `task`: {name: value}, main metric first.

    predictions: class ids (classification) or float scores (regression, STS-B); labels likewise.
    """
    spec = get_task(task)
    preds, golds = _to_numpy(predictions, "predictions"), _to_numpy(labels, "labels")
    if spec.is_regression:
        preds, golds = preds.reshape(-1).astype(float), golds.reshape(-1).astype(float)
    else:
        preds = _check_class_ids(spec, preds, "predictions")
        golds = _check_class_ids(spec, golds, "labels")
    if len(preds) != len(golds):
        raise PeftlabError(
            f"{len(preds)} predictions but {len(golds)} labels for {spec.name}; pass one prediction per example"
        )
    if len(preds) == 0:
        raise PeftlabError(f"no examples to score for {spec.name}; evaluate on a non-empty split")
    return {name: METRICS[name](preds, golds) for name in spec.metric_names}


def metrics_from_logits(task: str | TaskSpec, logits, labels) -> dict[str, float]:
    """`compute_metrics` on model outputs: argmax over the last axis ([N, num_labels]) or the
    squeezed score ([N, 1] or [N]) for regression."""
    spec = get_task(task)
    array = _to_numpy(logits, "logits").astype(float)
    if spec.is_regression:
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]  # [N, 1] -> [N]
        if array.ndim != 1:
            raise PeftlabError(f"regression logits for {spec.name} must have shape [N] or [N, 1], got {array.shape}")
        return compute_metrics(spec, array, labels)
    if array.ndim != 2 or array.shape[1] != spec.num_labels:
        raise PeftlabError(
            f"logits for {spec.name} must have shape [N, {spec.num_labels}], got {array.shape}; "
            "check that the model was built with this task's num_labels"
        )
    return compute_metrics(spec, array.argmax(axis=1), labels)


def logits_metric(num_labels: int):
    """("accuracy", fn) for classification, ("pearson", fn) for regression (num_labels = 1).

    `fn(logits, labels) -> float` scores a model's raw outputs: accuracy of argmax_c logits_ic, or
    Pearson r of logits[:, 0] (the regression score) against the targets. This is the task-agnostic
    metric head measurements report next to the loss (they know only the model's num_labels).
    """
    def accuracy_of_logits(logits, labels) -> float:
        predictions = _to_numpy(logits, "logits").argmax(axis=-1)  # [N, num_labels] -> [N]
        return accuracy(predictions, _to_numpy(labels, "labels"))

    def pearson_of_logits(logits, labels) -> float:
        golds = _to_numpy(labels, "labels").astype(float).reshape(-1)
        scores = _to_numpy(logits, "logits").astype(float).reshape(len(golds), -1)[:, 0]  # [N, 1] -> [N]
        return pearson(scores, golds)

    return ("pearson", pearson_of_logits) if num_labels == 1 else ("accuracy", accuracy_of_logits)


def per_example_loss(task: str | TaskSpec | int, logits, labels):
    """The training loss of every example, unreduced: a float64 torch tensor [N].

    Classification (num_labels ≥ 2), cross-entropy of the softmax:
        L_i = −log softmax(z_i)[y_i] = logsumexp_c z_ic − z_i,y_i
    Regression (num_labels = 1, STS-B), squared error:
        L_i = (z_i − y_i)²
    These are the losses Hugging Face `*ForSequenceClassification` models use (CrossEntropyLoss /
    MSELoss), so mean_i L_i equals the model's own `outputs.loss` (up to its float32 rounding).
    Computed in float64 because callers subtract two such losses (head ablation d_i = L_i(ablated)
    − L_i(base)) and float32 would lose the small differences.

    `task`: a task name / TaskSpec, or the model's `num_labels` (heads code knows only the config).
    `logits`: [N, num_labels] (regression: [N, 1] or [N]); `labels`: [N] class ids or targets.
    """
    import torch
    import torch.nn.functional as fn

    if isinstance(task, int) and not isinstance(task, bool):
        num_labels, name = task, f"a {task}-label model"
    else:
        spec = get_task(task)
        num_labels, name = spec.num_labels, spec.name
    logits = torch.as_tensor(logits).detach().to(torch.float64)
    labels = torch.as_tensor(labels).detach().to(logits.device)
    if num_labels == 1:
        if logits.ndim == 2 and logits.shape[1] == 1:
            logits = logits[:, 0]  # [N, 1] -> [N]
        if logits.ndim != 1 or labels.reshape(-1).shape != logits.shape:
            raise PeftlabError(
                f"regression logits for {name} must have shape [N] or [N, 1] with N labels, got logits "
                f"{tuple(logits.shape)} and labels {tuple(labels.shape)}; pass one score per example"
            )
        return fn.mse_loss(logits, labels.reshape(-1).to(torch.float64), reduction="none")
    if logits.ndim != 2 or logits.shape[1] != num_labels or labels.shape != (logits.shape[0],):
        raise PeftlabError(
            f"logits for {name} must have shape [N, {num_labels}] with N labels, got logits "
            f"{tuple(logits.shape)} and labels {tuple(labels.shape)}; check the model's num_labels"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise PeftlabError(f"labels for {name} must be integer class ids, got {labels.dtype}; convert them first")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_labels):
        raise PeftlabError(
            f"labels for {name} hold a class id outside 0..{num_labels - 1}; check that they belong to this task"
        )
    return fn.cross_entropy(logits, labels.long(), reduction="none")

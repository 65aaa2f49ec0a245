"""The arithmetic of head ablation, in one place: per-example losses, their differences, rows, metrics,
and the naive reference sweep that every faster path is tested against.

For head (layer, head) on the fixed subset of N examples (batches as built by
`peftlab.heads.subset.tokenize_batches`, labels included):

    L_i(g)      = the loss of example i with head gate g         (cross-entropy; squared error if regression)
    d_i         = L_i(g = 1 except g[layer, head] = 0) − L_i(g = 1)
    I           = mean_i d_i                       = loss_ablate − loss_base
    I_se        = sd(d_1..d_N, ddof=1) / √N        (resampled unit: the examples of the subset)
    I_ci_low/high = I ∓ t_{0.975, N−1} · I_se      (95 % t-interval; null when N < 2)

L_i is computed here from the logits and labels (`per_example_loss`), and every batch checks that
the mean of these L_i equals the model's own loss, so a model with another loss (label smoothing,
class weights, multi-label) fails loudly instead of being measured with the wrong formula.
Paired differences d_i are kept because their spread is far smaller than the spread of L_i itself:
the same example is scored with and without the head.

metric_base / metric_ablate: the task's main metric on the same subset (`task_metric`), or the
caller's `metric_fn(logits [N, C], labels [N]) -> float`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from peftlab.arch import head_shape
from peftlab.errors import PeftlabError
from peftlab.heads.batches import MetricFn, check_batches, measurement_mode, model_device, progress_bar, to_device
from peftlab.heads.gate import ablation_gate, head_gate

# Exact-importance row keys in contract order (docs/CONTRACTS.md); measure.py adds `theta0` after n_examples.
ROW_KEYS = ("layer", "head", "I", "I_se", "I_ci_low", "I_ci_high", "loss_base", "loss_ablate", "metric_name",
            "metric_base", "metric_ablate", "n_examples", "impl", "dL_dgate", "taylor")
CI_LEVEL = 0.95


@dataclass
class HeadResult:
    """One head's row and its per-example loss differences d_i ([N] float64, subset order)."""

    row: dict
    d: np.ndarray | None


# ---------------------------------------------------------------------------------------- losses


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_i in float64, [N]: −log softmax(logits_i)[y_i] for class ids, (logits_i − y_i)² for float labels.

    These are the per-example terms of HF's sequence-classification losses (CrossEntropyLoss and,
    for num_labels = 1, MSELoss); float64 so that differences of nearly equal losses keep their digits.
    """
    logits = logits.detach().double()
    if labels.is_floating_point():
        predictions = logits.reshape(labels.shape[0], -1)  # [N] or [N, 1] -> [N, 1]
        if predictions.shape[1] != 1:
            raise PeftlabError(f"float labels need one regression output per example, got logits of shape "
                               f"{tuple(logits.shape)}; use class-id labels for classification")
        return (predictions[:, 0] - labels.detach().double()).square()
    return torch.nn.functional.cross_entropy(logits, labels.detach(), reduction="none")


def check_model_loss(losses: torch.Tensor, model_loss: torch.Tensor | float) -> None:
    """PeftlabError unless mean_i L_i equals the model's own (fp32) batch loss up to float rounding."""
    mean, own = float(losses.mean()), float(model_loss)
    if not abs(mean - own) <= 1e-5 + 1e-4 * abs(own):
        raise PeftlabError(
            f"the model's own loss ({own:.6g}) is not the mean per-example cross-entropy / squared error "
            f"({mean:.6g}); peftlab measures heads with those losses — use a model without a custom loss "
            "(label smoothing, class weights, multi-label)"
        )


class SubsetScore:
    """Per-example losses (float64) and logits of every example, accumulated batch by batch."""

    def __init__(self):
        self._losses: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def add(self, model_loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        losses = per_example_loss(logits, labels)
        check_model_loss(losses, model_loss)
        self._losses.append(losses.cpu())
        self.logits.append(logits.detach().float().cpu())
        self.labels.append(labels.detach().cpu())

    @property
    def n_examples(self) -> int:
        return sum(int(x.shape[0]) for x in self._losses)

    @property
    def losses(self) -> np.ndarray:
        """[N] float64 L_i in subset order."""
        return torch.cat(self._losses).numpy()

    @property
    def loss(self) -> float:
        """L = mean_i L_i."""
        return float(np.mean(self.losses))

    def metric(self, metric_fn: MetricFn) -> float:
        return float(metric_fn(torch.cat(self.logits), torch.cat(self.labels)))


def mean_se_ci(d: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float | None, float | None, float | None]:
    """(mean, se, ci_low, ci_high) of d: se = sd(d, ddof=1)/√N, CI = mean ± t_{(1+level)/2, N−1}·se (scipy).

    se and the CI are None for N < 2 (no spread to estimate).
    """
    from scipy.stats import t

    n = len(d)
    mean = float(np.mean(d))
    if n < 2:
        return mean, None, None, None
    se = float(np.std(d, ddof=1) / math.sqrt(n))
    half = float(t.ppf((1 + level) / 2, n - 1)) * se
    return mean, se, mean - half, mean + half


# ---------------------------------------------------------------------------------------- metrics


def task_metric(task) -> tuple[str, MetricFn]:
    """(main metric name, fn(logits, labels)) of a task, via `peftlab.tasks.metrics_from_logits`."""
    from peftlab.tasks import get_task, metrics_from_logits

    spec = get_task(task)

    def main_metric(logits: torch.Tensor, labels: torch.Tensor) -> float:
        return float(metrics_from_logits(spec, logits, labels.cpu().numpy())[spec.main_metric])

    main_metric.__name__ = spec.main_metric
    return spec.main_metric, main_metric


def default_metric(num_labels: int) -> tuple[str, MetricFn]:
    """Without a task: accuracy of argmax(logits), or Pearson r of the regression output (num_labels = 1),
    with the task package's own metric functions."""
    from peftlab.tasks import accuracy, pearson

    if num_labels == 1:
        def regression_pearson(logits: torch.Tensor, labels: torch.Tensor) -> float:
            predictions = logits.reshape(len(labels), -1)[:, 0]  # [N, 1] -> [N]
            return pearson(predictions.double().cpu().numpy(), labels.double().cpu().numpy())

        return "pearson", regression_pearson

    def argmax_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
        return accuracy(logits.argmax(-1).cpu().numpy(), labels.cpu().numpy())

    return "accuracy", argmax_accuracy


def resolve_metric(model: nn.Module, metric_fn: MetricFn | None = None, metric_name: str | None = None,
                   task=None) -> tuple[str, MetricFn]:
    """The (name, fn) to use: the caller's fn, else the task's main metric, else the default for num_labels."""
    if metric_fn is not None:
        return metric_name or getattr(metric_fn, "__name__", "metric"), metric_fn
    if task is not None:
        return task_metric(task)
    return default_metric(int(getattr(model.config, "num_labels", 2)))


# ---------------------------------------------------------------------------------------- rows


def importance_row(layer: int, head: int, base: SubsetScore, ablated: SubsetScore | None, metric_name: str,
                   metric_fn: MetricFn, impl: str | None, dL_dgate: float | None = None) -> HeadResult:
    """One row (keys ROW_KEYS) and its d_i. Without an ablation (Taylor only) I and its spread are None."""
    d = None
    mean = se = low = high = loss_ablate = metric_ablate = None
    if ablated is not None:
        d = ablated.losses - base.losses  # [N] paired differences d_i
        mean, se, low, high = mean_se_ci(d)
        loss_ablate, metric_ablate = ablated.loss, ablated.metric(metric_fn)
    row = {
        "layer": layer,
        "head": head,
        "I": mean,
        "I_se": se,
        "I_ci_low": low,
        "I_ci_high": high,
        "loss_base": base.loss,
        "loss_ablate": loss_ablate,
        "metric_name": metric_name,
        "metric_base": base.metric(metric_fn),
        "metric_ablate": metric_ablate,
        "n_examples": base.n_examples,
        "impl": impl,
        "dL_dgate": dL_dgate,
        "taylor": abs(dL_dgate) if dL_dgate is not None else None,
    }
    return HeadResult(row, d)


# ---------------------------------------------------------------------------------------- naive reference


def subset_score(model: nn.Module, batches: Sequence[dict]) -> SubsetScore:
    """Per-example losses and logits of `model` as it is (hooks included) over all batches, without gradients."""
    score = SubsetScore()
    device = model_device(model)
    with torch.no_grad():
        for batch in batches:
            batch = to_device(batch, device)
            outputs = model(**batch)
            score.add(outputs.loss, outputs.logits, batch["labels"])
    return score


def iter_naive_importance(model: nn.Module, batches: Sequence[dict], metric_fn: MetricFn | None = None,
                          metric_name: str | None = None, done: Iterable[tuple[int, int]] = (),
                          progress: bool = True, on_progress: Callable[[int, int], None] | None = None,
                          task=None) -> Iterator[HeadResult]:
    """The reference: for every head not in `done`, one full forward per batch with that head gated to 0."""
    check_batches(batches)
    name, fn = resolve_metric(model, metric_fn, metric_name, task)
    shape = head_shape(model)
    done = set(done)
    todo = [(layer, head) for layer in range(shape.n_layers) for head in range(shape.n_heads)
            if (layer, head) not in done]
    device = model_device(model)
    with measurement_mode(model), progress_bar((1 + len(todo)) * len(batches), "importance (naive)", progress,
                                               on_progress) as advance:
        base = subset_score(model, batches)
        advance(len(batches))
        for layer, head in todo:
            with head_gate(model, ablation_gate(model, layer, head, device=device)):
                ablated = subset_score(model, batches)
            advance(len(batches))
            yield importance_row(layer, head, base, ablated, name, fn, "naive")

"""Per-head importance: the loss increase when a head is ablated, exact (fast or naive) or first-order.

For head (layer, head), on a fixed subset of N examples (batches as built by
`peftlab.heads.subset.tokenize_batches`, labels included; see `heads/batches.py`):

    loss_base   = L(g = 1)                       L = mean over the N examples of the model's own loss
    loss_ablate = L(g = 1 except g[layer, head] = 0)          (cross-entropy; MSE when num_labels = 1)
    I           = loss_ablate - loss_base
    taylor      = |∂L/∂g[layer, head]| at g = 1                (first-order proxy, one backward per batch)

metric_base / metric_ablate: the task metric on the same subset (`metric_fn(logits [N, C], labels [N])`,
default accuracy, or Pearson r for regression).

Implementations behind one interface (`impl`):
    "naive"   one full forward per head and batch with a head gate (heads/gate.py) — the reference.
    "fast"    the same numbers, cheaper (heads/importance_fast.py); falls back to naive, with a
              warning and `impl: "naive"` in its rows, where its self-checks fail.
    "taylor"  |∂L/∂gate| rows with the same keys (`loss_ablate`, `metric_ablate` are None).

Rows (one per head, in (layer, head) order): layer, head, I, loss_base, loss_ablate, metric_name,
metric_base, metric_ablate, n_examples, impl, taylor. The model is measured as it is (eval mode is set
for the duration); the caller loads it in fp32.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn as nn

from peftlab.arch import head_shape
from peftlab.errors import PeftlabError
from peftlab.heads.batches import (
    MetricFn,
    SubsetScore,
    check_batches,
    default_metric,
    measurement_mode,
    model_device,
    progress_bar,
    to_device,
)
from peftlab.heads.gate import ablation_gate, head_gate, ones_gate

IMPLS = ("fast", "naive", "taylor")
Row = dict


def resolve_metric(model: nn.Module, metric_fn: MetricFn | None, metric_name: str | None) -> tuple[str, MetricFn]:
    """The (name, fn) to use: the caller's, else the default for the model's num_labels."""
    name, default_fn = default_metric(int(getattr(model.config, "num_labels", 2)))
    if metric_fn is None:
        return name, default_fn
    return metric_name or getattr(metric_fn, "__name__", "metric"), metric_fn


def importance_row(layer: int, head: int, base: SubsetScore, ablated: SubsetScore | None, metric_name: str,
                   metric_fn: MetricFn, impl: str, taylor: float | None = None) -> Row:
    """One output row; I = loss_ablate - loss_base (or the Taylor score when there is no ablation)."""
    loss_ablate = ablated.loss if ablated is not None else None
    return {
        "layer": layer,
        "head": head,
        "I": (loss_ablate - base.loss) if ablated is not None else taylor,
        "loss_base": base.loss,
        "loss_ablate": loss_ablate,
        "metric_name": metric_name,
        "metric_base": base.metric(metric_fn),
        "metric_ablate": ablated.metric(metric_fn) if ablated is not None else None,
        "n_examples": base.n_examples,
        "impl": impl,
        "taylor": taylor,
    }


def subset_score(model: nn.Module, batches: Sequence[dict]) -> SubsetScore:
    """Loss and logits of `model` as it is (hooks included) over all batches, without gradients."""
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
                          ) -> Iterator[Row]:
    """The reference: for every head, one full forward per batch with that head gated to 0."""
    check_batches(batches)
    name, fn = resolve_metric(model, metric_fn, metric_name)
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


def iter_exact_importance(model: nn.Module, batches: Sequence[dict], impl: str = "fast",
                          metric_fn: MetricFn | None = None, metric_name: str | None = None,
                          done: Iterable[tuple[int, int]] = (), progress: bool = True,
                          on_progress: Callable[[int, int], None] | None = None,
                          memory_mb: float = 1024.0) -> Iterator[Row]:
    """Yield one exact-importance row per head not in `done`, in (layer, head) order.

    `impl` "fast" (default) or "naive"; `done` skips heads already measured (resume); `memory_mb`
    bounds what the fast path caches (see importance_fast.py). Rows say which impl produced them.
    """
    if impl == "naive":
        yield from iter_naive_importance(model, batches, metric_fn, metric_name, done, progress, on_progress)
    elif impl == "fast":
        from peftlab.heads.importance_fast import iter_fast_importance

        yield from iter_fast_importance(model, batches, metric_fn, metric_name, done, progress, on_progress,
                                        memory_mb)
    else:
        raise PeftlabError(f"unknown exact importance impl '{impl}'; choose 'fast' or 'naive'")


def exact_importance(model: nn.Module, batches: Sequence[dict], impl: str = "fast",
                     metric_fn: MetricFn | None = None, metric_name: str | None = None,
                     done: Iterable[tuple[int, int]] = (), on_head: Callable[[Row], None] | None = None,
                     progress: bool = True, on_progress: Callable[[int, int], None] | None = None,
                     memory_mb: float = 1024.0) -> list[Row]:
    """All rows of `iter_exact_importance`, calling `on_head(row)` as each head finishes."""
    rows = []
    for row in iter_exact_importance(model, batches, impl, metric_fn, metric_name, done, progress, on_progress,
                                     memory_mb):
        if on_head is not None:
            on_head(row)
        rows.append(row)
    return rows


def taylor_importance(model: nn.Module, batches: Sequence[dict], metric_fn: MetricFn | None = None,
                      metric_name: str | None = None, progress: bool = True,
                      on_progress: Callable[[int, int], None] | None = None) -> list[Row]:
    """Rows with I = taylor = |∂L/∂g[layer, head]| at g = 1, L the subset-mean loss.

    ∂L/∂g = Σ_b (n_b / N) ∂loss_b/∂g: one backward per batch through a gate that requires grad
    (only the gate's gradient is computed; parameters' .grad are left untouched).
    """
    n_examples = check_batches(batches)
    name, fn = resolve_metric(model, metric_fn, metric_name)
    device = model_device(model)
    gate = ones_gate(model, requires_grad=True, dtype=torch.float64, device=device)
    grad_sum = torch.zeros_like(gate, requires_grad=False)
    base = SubsetScore()
    with measurement_mode(model), head_gate(model, gate), \
            progress_bar(len(batches), "importance (taylor)", progress, on_progress) as advance:
        for batch in batches:
            batch = to_device(batch, device)
            outputs = model(**batch)
            n_rows = batch["labels"].shape[0]
            (grad,) = torch.autograd.grad(outputs.loss * n_rows, gate)  # ∂(Σ_i L_i)/∂g over this batch
            grad_sum += grad
            base.add(outputs.loss.detach(), outputs.logits, batch["labels"])
            advance(1)
    scores = (grad_sum / n_examples).abs()  # |∂L/∂g|, L = subset mean
    return [importance_row(layer, head, base, None, name, fn, "taylor", float(scores[layer, head]))
            for layer in range(scores.shape[0]) for head in range(scores.shape[1])]


def importance(model: nn.Module, batches: Sequence[dict], impl: str = "fast", **kwargs) -> list[Row]:
    """Dispatch: impl "fast" | "naive" → `exact_importance`, "taylor" → `taylor_importance`."""
    if impl == "taylor":
        kwargs.pop("done", None)
        kwargs.pop("on_head", None)
        kwargs.pop("memory_mb", None)
        return taylor_importance(model, batches, **kwargs)
    if impl not in IMPLS:
        raise PeftlabError(f"unknown importance impl '{impl}'; choose one of {', '.join(IMPLS)}")
    return exact_importance(model, batches, impl, **kwargs)

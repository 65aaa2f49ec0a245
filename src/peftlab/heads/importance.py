"""Per-head importance behind one interface: which engine computes it.

Definitions (I, I_se, its CI, d_i) live in `heads/ablation.py`, the first-order score in
`heads/taylor.py`. Engines (`impl`):
    "naive"   one full forward per head and batch with a head gate — the reference (ablation.py).
    "fast"    the same numbers, cheaper (importance_fast.py); falls back to naive, with a warning and
              `impl: "naive"` in its rows, where its self-checks fail.
    "taylor"  first-order rows: `dL_dgate`, `taylor` = |dL_dgate|; I, I_se, loss_ablate are None.

Exact engines yield `HeadResult(row, d)`: the row (keys `ablation.ROW_KEYS`) and the head's
per-example loss differences d_i ([N] float64, subset order). The model is measured as it is (eval
mode is set for the duration); the caller loads it in fp32.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

import torch.nn as nn

from peftlab.errors import PeftlabError
from peftlab.heads.ablation import ROW_KEYS, HeadResult, iter_naive_importance
from peftlab.heads.batches import MetricFn
from peftlab.heads.taylor import taylor_importance

IMPLS = ("fast", "naive", "taylor")
__all__ = ["IMPLS", "ROW_KEYS", "HeadResult", "exact_importance", "importance", "iter_exact_importance",
           "taylor_importance"]


def iter_exact_importance(model: nn.Module, batches: Sequence[dict], impl: str = "fast",
                          metric_fn: MetricFn | None = None, metric_name: str | None = None,
                          done: Iterable[tuple[int, int]] = (), progress: bool = True,
                          on_progress: Callable[[int, int], None] | None = None,
                          memory_mb: float = 1024.0, task=None) -> Iterator[HeadResult]:
    """Yield one `HeadResult` per head not in `done`, in (layer, head) order.

    `impl` "fast" (default) or "naive"; `done` skips heads already measured (resume); `memory_mb`
    bounds what the fast path caches (see importance_fast.py); `task` picks the metric (its main
    metric) unless `metric_fn` is given. Rows say which impl produced them.
    """
    if impl == "naive":
        yield from iter_naive_importance(model, batches, metric_fn, metric_name, done, progress, on_progress, task)
    elif impl == "fast":
        from peftlab.heads.importance_fast import iter_fast_importance

        yield from iter_fast_importance(model, batches, metric_fn, metric_name, done, progress, on_progress,
                                        memory_mb, task)
    else:
        raise PeftlabError(f"unknown exact importance impl '{impl}'; choose 'fast' or 'naive'")


def exact_importance(model: nn.Module, batches: Sequence[dict], impl: str = "fast",
                     metric_fn: MetricFn | None = None, metric_name: str | None = None,
                     done: Iterable[tuple[int, int]] = (), on_head: Callable[[HeadResult], None] | None = None,
                     progress: bool = True, on_progress: Callable[[int, int], None] | None = None,
                     memory_mb: float = 1024.0, task=None) -> list[dict]:
    """The rows of `iter_exact_importance`, calling `on_head(result)` (row and d_i) as each head finishes."""
    rows = []
    for result in iter_exact_importance(model, batches, impl, metric_fn, metric_name, done, progress, on_progress,
                                        memory_mb, task):
        if on_head is not None:
            on_head(result)
        rows.append(result.row)
    return rows


def importance(model: nn.Module, batches: Sequence[dict], impl: str = "fast", **kwargs) -> list[dict]:
    """Dispatch: impl "fast" | "naive" → `exact_importance`, "taylor" → `taylor_importance`."""
    if impl == "taylor":
        for key in ("done", "on_head", "memory_mb"):
            kwargs.pop(key, None)
        return taylor_importance(model, batches, **kwargs)
    if impl not in IMPLS:
        raise PeftlabError(f"unknown importance impl '{impl}'; choose one of {', '.join(IMPLS)}")
    return exact_importance(model, batches, impl, **kwargs)

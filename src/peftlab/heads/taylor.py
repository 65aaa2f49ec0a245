"""First-order (Taylor) importance: the gradient of the subset-mean loss with respect to each head's gate.

    dL_dgate[layer, head] = ∂L/∂g[layer, head] at g = 1,   L = mean_i L_i over the N subset examples
    taylor               = |dL_dgate|

Removing a head moves its gate from 1 to 0, so the first-order estimate of the exact importance I
(heads/ablation.py) is L(g − e_h) − L(g) ≈ −dL_dgate. Rows carry I = null: a Taylor score is never
reported as importance. One backward per batch; ∂L/∂g = Σ_b (n_b / N) ∂loss_b/∂g, only the gate's
gradient is computed (parameters' .grad are left untouched).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from peftlab.heads.ablation import SubsetScore, importance_row, resolve_metric
from peftlab.heads.batches import MetricFn, check_batches, measurement_mode, model_device, progress_bar, to_device
from peftlab.heads.gate import head_gate, ones_gate


def taylor_importance(model: nn.Module, batches: Sequence[dict], metric_fn: MetricFn | None = None,
                      metric_name: str | None = None, progress: bool = True,
                      on_progress: Callable[[int, int], None] | None = None, task=None) -> list[dict]:
    """Rows (heads/ablation.py ROW_KEYS) with `dL_dgate`, `taylor`, the base loss/metric, and I = None."""
    n_examples = check_batches(batches)
    name, fn = resolve_metric(model, metric_fn, metric_name, task)
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
    signed = grad_sum / n_examples  # ∂L/∂g, L = subset mean
    return [importance_row(layer, head, base, None, name, fn, None, float(signed[layer, head])).row
            for layer in range(signed.shape[0]) for head in range(signed.shape[1])]


BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def taylor_vs_exact(rows: list[dict], n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """How well the first-order score ranks heads like the exact importance, over all heads:

        signed     Spearman ρ(−dL_dgate, I)     (first-order I ≈ −dL_dgate)
        magnitude  Spearman ρ(|dL_dgate|, |I|)  (= ρ(taylor, |I|))

    each with scipy's two-sided p and a 95 % paired percentile bootstrap CI over heads
    (scipy.stats.bootstrap, `n_resamples`, seed recorded). Rows need both I and dL_dgate.
    `spearman`/`p` at the top level repeat the signed comparison (what older readers show).
    """
    import math
    import warnings

    import numpy as np
    from scipy.stats import bootstrap, rankdata, spearmanr

    exact = np.array([row["I"] for row in rows], dtype=float)
    gradient = np.array([row["dL_dgate"] for row in rows], dtype=float)

    def clean(x) -> float | None:
        return None if x is None or math.isnan(float(x)) else float(x)

    def rho(x, y, axis=-1):
        """Spearman ρ along `axis` = Pearson r of average ranks (vectorized over bootstrap resamples)."""
        rx, ry = rankdata(x, axis=axis), rankdata(y, axis=axis)
        rx = rx - rx.mean(axis=axis, keepdims=True)
        ry = ry - ry.mean(axis=axis, keepdims=True)
        return (rx * ry).sum(axis=axis) / np.sqrt((rx * rx).sum(axis=axis) * (ry * ry).sum(axis=axis))

    def compare(x: np.ndarray, y: np.ndarray) -> dict:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant input or degenerate resamples: ρ undefined → null
            result = spearmanr(x, y)
            ci = bootstrap((x, y), rho, paired=True, vectorized=True, method="percentile", n_resamples=n_resamples,
                           confidence_level=0.95, rng=np.random.default_rng(seed)).confidence_interval
        return {"spearman": clean(result.statistic), "p": clean(result.pvalue), "ci_low": clean(ci.low),
                "ci_high": clean(ci.high)}

    signed = compare(-gradient, exact)
    return {
        "spearman": signed["spearman"],
        "p": signed["p"],
        "signed": {"x": "-dL_dgate", "y": "I", **signed},
        "magnitude": {"x": "|dL_dgate|", "y": "|I|", **compare(np.abs(gradient), np.abs(exact))},
        "n_heads": len(rows),
        "bootstrap": {"method": "paired percentile (scipy.stats.bootstrap)", "unit": "heads",
                      "n_resamples": n_resamples, "seed": seed, "confidence_level": 0.95},
    }

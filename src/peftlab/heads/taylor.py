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

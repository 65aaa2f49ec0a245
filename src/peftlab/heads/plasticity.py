"""Per-head plasticity at θ0: how strongly the loss of each example pulls on each head's gate.

For head (layer, head) and the N examples i of the subset, with g the head gate (heads/gate.py):

    G = mean_i |∂L_i/∂g[layer, head]|        (gradient proxy)
    F = mean_i (∂L_i/∂g[layer, head])²       (empirical Fisher proxy)

L_i is the model's own loss on example i (cross-entropy; squared error for regression), at g = 1.

Per-example gradients in one backward per batch: every row i of a batch gets its own gate g_i
(gate shape [B, n_layers, n_heads], one variant per row), and the gradient is taken of the SUM of the
per-example losses. Examples do not interact in eval mode, so ∂(Σ_j L_j)/∂g_i = ∂L_i/∂g_i.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from peftlab.errors import PeftlabError
from peftlab.heads.batches import check_batches, measurement_mode, model_device, progress_bar, to_device
from peftlab.heads.gate import head_gate, ones_gate


def gradfisher(model: nn.Module, batches: Sequence[dict], per: str = "example", progress: bool = True,
               on_progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Rows `layer, head, G, F, n_examples, batch_size, per` in (layer, head) order (see module docstring).

    `batch_size` is the largest batch's row count. Only `per="example"` is defined.
    """
    if per != "example":
        raise PeftlabError(f"plasticity per='{per}' is not supported; use per='example'")
    n_examples = check_batches(batches)
    device = model_device(model)
    abs_sum = square_sum = None
    with measurement_mode(model), progress_bar(len(batches), "plasticity", progress, on_progress) as advance:
        for batch in batches:
            batch = to_device(batch, device)
            n_rows = int(batch["labels"].shape[0])
            gate = ones_gate(model, variants=n_rows, requires_grad=True, dtype=torch.float64, device=device)
            with head_gate(model, gate):
                outputs = model(**batch)
            # The model's loss is the batch mean; × n_rows gives Σ_i L_i, whose gradient w.r.t. g_i is ∂L_i/∂g_i.
            (grads,) = torch.autograd.grad(outputs.loss * n_rows, gate)  # [B, n_layers, n_heads]
            batch_abs, batch_square = grads.abs().sum(0), grads.square().sum(0)
            abs_sum = batch_abs if abs_sum is None else abs_sum + batch_abs
            square_sum = batch_square if square_sum is None else square_sum + batch_square
            advance(1)
    grad_mean, fisher = abs_sum / n_examples, square_sum / n_examples
    batch_size = max(int(batch["labels"].shape[0]) for batch in batches)
    return [
        {"layer": layer, "head": head, "G": float(grad_mean[layer, head]), "F": float(fisher[layer, head]),
         "n_examples": n_examples, "batch_size": batch_size, "per": per}
        for layer in range(grad_mean.shape[0]) for head in range(grad_mean.shape[1])
    ]

"""Per-head plasticity at θ0: how strongly the loss of each example pulls on each head's gate.

For head (layer, head) and the N examples i of the subset, with g the head gate (heads/gate.py):

    G = mean_i |∂L_i/∂g[layer, head]|        (gradient proxy)       G_se = sd_i |∂L_i/∂g| / √N
    F = mean_i (∂L_i/∂g[layer, head])²       (empirical Fisher proxy) F_se = sd_i (∂L_i/∂g)² / √N
(sd with ddof = 1; the resampled unit is the example; the SEs are null for N < 2.)

L_i is the model's own loss on example i (cross-entropy; squared error for regression), at g = 1.

Per-example gradients in one backward per batch: every row i of a batch gets its own gate g_i
(gate shape [B, n_layers, n_heads], one variant per row), and the gradient is taken of the SUM of the
per-example losses. Examples do not interact in eval mode, so ∂(Σ_j L_j)/∂g_i = ∂L_i/∂g_i.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from peftlab.errors import PeftlabError
from peftlab.heads.batches import check_batches, measurement_mode, model_device, progress_bar, to_device
from peftlab.heads.gate import head_gate, ones_gate


def gradfisher(model: nn.Module, batches: Sequence[dict], per: str = "example", progress: bool = True,
               on_progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Rows `layer, head, G, G_se, F, F_se, n_examples, batch_size, per` in (layer, head) order (module docstring).

    `batch_size` is the largest batch's row count. Only `per="example"` is defined.
    """
    if per != "example":
        raise PeftlabError(f"plasticity per='{per}' is not supported; use per='example'")
    n_examples = check_batches(batches)
    device = model_device(model)
    per_example: list[torch.Tensor] = []  # [B, n_layers, n_heads] per batch: ∂L_i/∂g_i
    with measurement_mode(model), progress_bar(len(batches), "plasticity", progress, on_progress) as advance:
        for batch in batches:
            batch = to_device(batch, device)
            n_rows = int(batch["labels"].shape[0])
            gate = ones_gate(model, variants=n_rows, requires_grad=True, dtype=torch.float64, device=device)
            with head_gate(model, gate):
                outputs = model(**batch)
            # The model's loss is the batch mean; × n_rows gives Σ_i L_i, whose gradient w.r.t. g_i is ∂L_i/∂g_i.
            (grads,) = torch.autograd.grad(outputs.loss * n_rows, gate)  # [B, n_layers, n_heads]
            per_example.append(grads.detach().cpu())
            advance(1)
    grads = torch.cat(per_example).numpy()  # [N, n_layers, n_heads] float64
    magnitude, square = np.abs(grads), np.square(grads)
    grad_mean, fisher = magnitude.mean(0), square.mean(0)
    batch_size = max(int(batch["labels"].shape[0]) for batch in batches)

    def se(values: np.ndarray, layer: int, head: int) -> float | None:
        """sd_i(values[i, layer, head], ddof=1) / √N; None for a single example."""
        if n_examples < 2:
            return None
        return float(values[:, layer, head].std(ddof=1) / math.sqrt(n_examples))

    return [
        {"layer": layer, "head": head, "G": float(grad_mean[layer, head]), "G_se": se(magnitude, layer, head),
         "F": float(fisher[layer, head]), "F_se": se(square, layer, head),
         "n_examples": n_examples, "batch_size": batch_size, "per": per}
        for layer in range(grad_mean.shape[0]) for head in range(grad_mean.shape[1])
    ]

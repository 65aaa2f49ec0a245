"""Where a regression head starts: its output bias at the mean of the training labels (config `regression_bias`).

HF initialises the classifier's output bias at 0. For a regression task whose labels are far from 0
(STS-B: 0–5, mean ≈ 2.7) the first hundreds of steps then only move that offset: Adam changes a
parameter by about `lr` per step, so at LoRA's lr 2e-3 a bias needs > 1,000 steps to cross 2.7, and a
short LoRA run ends predicting a constant (dev Pearson ≈ 0.02 on STS-B at 100 steps, README). Starting
the bias at the training-label mean b₀ = (1/N) Σ yᵢ makes the initial prediction the best constant
(MSE = Var(y)), so the steps go to the similarity itself. FFT benefits too, less (the whole body moves).

The choice is made before θ0 is saved, so θ0 (ckpt_init), the probe and every pre measurement see the
same head; `"zero"` keeps HF's init. Classification heads are never touched.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from peftlab.arch import classifier_module_names
from peftlab.errors import PeftlabError

REGRESSION_BIASES = ("mean", "zero")


def output_layer(model: nn.Module, num_labels: int) -> tuple[str, nn.Linear]:
    """(name, module) of the last `nn.Linear` inside the model's classifier modules with `num_labels` outputs."""
    found = []
    for top in classifier_module_names(model):
        for name, module in model.get_submodule(top).named_modules():
            if isinstance(module, nn.Linear) and module.out_features == num_labels:
                found.append((f"{top}.{name}" if name else top, module))
    if not found:
        raise PeftlabError(f"found no {num_labels}-output nn.Linear in the classifier of this "
                           f"{type(model).__name__}; pass regression_bias=zero")
    return found[-1]


def init_regression_bias(model: nn.Module, labels, rule: str) -> dict[str, Any]:
    """Set the regression output bias by `rule` ("mean": mean of `labels`; "zero": leave HF's init).

    Returns what was done, for run_config.json: {"rule", "module", "value"} ("value" None when untouched).
    """
    if rule not in REGRESSION_BIASES:
        raise PeftlabError(f"unknown regression_bias '{rule}'; choose from {', '.join(REGRESSION_BIASES)}")
    name, layer = output_layer(model, 1)
    if rule == "zero":
        return {"rule": rule, "module": name, "value": None}
    if layer.bias is None:  # e.g. llama's `score` has no bias: nothing to start at the mean
        return {"rule": rule, "module": name, "value": None, "note": "output layer has no bias: left as is"}
    y = torch.as_tensor([float(v) for v in labels], dtype=torch.float64)
    if y.numel() == 0 or not torch.isfinite(y).all():
        raise PeftlabError("regression labels must be finite numbers to start the head at their mean; "
                           "check the training split or pass regression_bias=zero")
    mean = float(y.mean())
    with torch.no_grad():
        layer.bias.fill_(mean)
    return {"rule": rule, "module": name, "value": mean}

"""Houlsby bottleneck adapters (peftlab's own module; no PEFT tuner exists for them).

Two adapters per layer, one after the attention output projection's dropout and one after the FFN
output's dropout, before the residual + LayerNorm (paths per family in `ArchSpec.adapter_paths`):

    LayerNorm(adapter(dropout(dense(h))) + input),   adapter(h) = h + up(act(down(h)))
    down: Linear(d → b), up: Linear(b → d)     weights ~ truncated normal σ = 1e-2 cut at ±2σ, biases 0.
    parameters per adapter: d·b + b (down) + b·d + d (up) = 2·d·b + b + d

Written by hand because the adapter-hub library pins transformers 4.57 and cannot share this
environment. At init the adapter is the identity up to the tiny `up(act(down(h)))` (≈1e-2·1e-2 per
entry per unit of h): logits move by < 1e-5 on the tiny test models (measured and asserted in tests).

Trains: the adapters, the classifier, and with `adapter_ln=true` the layers' LayerNorms (adapted layers
only, as Houlsby et al.). Adapters **cannot be merged** into the base weights: each adds two matmuls per
layer at inference. They do not change q/k/v/o/ffn weights, so `delta_weights` returns {} and measure's
update step says "not applicable".
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from peftlab.arch import classifier_module_names, find_layers, get_arch, get_submodule
from peftlab.errors import PeftlabError
from peftlab.methods.base import base_fingerprint, register_method, stash_fingerprint
from peftlab.methods.own_state import SETTINGS_ATTR, OwnStateMethod

INIT_STD = 1e-2  # Houlsby et al.: near-identity init


class BottleneckAdapter(nn.Module):
    """h + up(act(down(h))) on the last dimension; h: [..., d]."""

    def __init__(self, d: int, bottleneck: int, act: str, generator: torch.Generator):
        super().__init__()
        self.down = nn.Linear(d, bottleneck)
        self.up = nn.Linear(bottleneck, d)
        self.act_name = act
        with torch.no_grad():
            for linear in (self.down, self.up):
                # truncated normal at ±2σ drawn from `generator` (nn.init.trunc_normal_ takes no generator)
                w = torch.empty(linear.weight.shape)
                w.normal_(0.0, INIT_STD, generator=generator)
                while bool((bad := w.abs() > 2 * INIT_STD).any()):
                    w[bad] = torch.empty(int(bad.sum())).normal_(0.0, INIT_STD, generator=generator)
                linear.weight.copy_(w)
                linear.bias.zero_()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(getattr(F, self.act_name)(self.down(h)))

    def extra_repr(self) -> str:
        return f"act={self.act_name}"


class DropoutThenAdapter(nn.Module):
    """Stands where the output dropout was: `adapter(dropout(x))`; keeps the dropout as `.dropout`."""

    def __init__(self, dropout: nn.Module, adapter: BottleneckAdapter):
        super().__init__()
        self.dropout = dropout
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.dropout(x))


def adapter_param_count(d: int, bottleneck: int) -> int:
    """Parameters of one adapter: 2·d·b + b + d."""
    return 2 * d * bottleneck + bottleneck + d


def adapter_modules(model: nn.Module) -> list[tuple[str, BottleneckAdapter]]:
    """(module name, adapter) for every adapter in `model`, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, BottleneckAdapter)]


def _check_settings(cfg) -> tuple[int, str, bool]:
    from peftlab.config import ADAPTER_ACTS

    bottleneck = getattr(cfg, "adapter_bottleneck", 64)
    act = str(getattr(cfg, "adapter_act", "gelu"))
    if isinstance(bottleneck, bool) or not isinstance(bottleneck, int) or bottleneck <= 0:
        raise PeftlabError(f"adapter_bottleneck must be a positive integer, got {bottleneck!r}; "
                           f"pass e.g. adapter_bottleneck=64")
    if act not in ADAPTER_ACTS:
        raise PeftlabError(f"unknown adapter_act '{act}'; choose from {', '.join(ADAPTER_ACTS)}")
    return bottleneck, act, bool(getattr(cfg, "adapter_ln", False))


@register_method
class AdapterMethod(OwnStateMethod):
    name = "adapter"
    dir_name = "Adapter"
    option_keys = ("adapter_bottleneck", "adapter_act", "adapter_ln")
    low_rank = False
    mergeable = False
    delta_note = ("adapters add new modules after the attention and FFN outputs and leave q/k/v/o weights "
                  "unchanged, so there is no per-head ΔW of q/k/v/o")

    def apply(self, model: nn.Module, cfg) -> nn.Module:
        bottleneck, act, train_ln = _check_settings(cfg)
        spec = get_arch(model)
        if not spec.adapter_paths:
            supported = "bert, roberta, electra, deberta-v2"
            raise PeftlabError(f"adapters are not placed for {spec.family} models (no adapter_paths in its ArchSpec); "
                               f"use a {supported} model or another method (e.g. lora)")
        fingerprint = base_fingerprint(model)
        d = int(model.config.hidden_size)
        generator = torch.Generator().manual_seed(int(cfg.seed))
        model.requires_grad_(False)
        _, layers = find_layers(model)
        for layer in layers:
            for path in spec.adapter_paths:
                dropout = get_submodule(layer, path)
                if isinstance(dropout, DropoutThenAdapter):
                    raise PeftlabError("this model already has adapters; apply the adapter method to a plain base "
                                       "model only")
                parent_path, _, child = path.rpartition(".")
                parent = get_submodule(layer, parent_path) if parent_path else layer
                setattr(parent, child, DropoutThenAdapter(dropout, BottleneckAdapter(d, bottleneck, act, generator)))
            if train_ln:
                for path in spec.adapter_ln_paths:
                    get_submodule(layer, path).requires_grad_(True)
        for _, adapter in adapter_modules(model):
            adapter.requires_grad_(True)
        for name in classifier_module_names(model):
            model.get_submodule(name).requires_grad_(True)
        stash_fingerprint(model, fingerprint)
        setattr(model, SETTINGS_ATTR, {"adapter_bottleneck": bottleneck, "adapter_act": act, "adapter_ln": train_ln})
        return model

    def trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """Adapters (`*.adapter.down/up.*`), the classifier, and with adapter_ln the adapted layers' LayerNorms."""
        classifier = classifier_module_names(model)
        train_ln = bool((getattr(model, SETTINGS_ATTR, None) or {}).get("adapter_ln"))
        ln_suffixes = tuple(f".{path}." for path in get_arch(model).adapter_ln_paths) if train_ln else ()
        return [(name, param) for name, param in model.named_parameters()
                if ".adapter." in name or name.split(".", 1)[0] in classifier
                or (ln_suffixes and any(s in name for s in ln_suffixes))]

"""BitFit (peftlab's own): only the bias terms train, plus the classifier.

Every `*.bias` parameter of the body (attention q/k/v/o, FFN, LayerNorm biases) trains; weights stay
frozen. No weight matrix changes, so `delta_weights` is {} (measure's update step says "not
applicable"): a bias shift is not a ΔW of q/k/v/o. No inference cost (nothing is added).
"""

from __future__ import annotations

import torch.nn as nn

from peftlab.arch import classifier_module_names
from peftlab.methods.base import base_fingerprint, register_method, stash_fingerprint
from peftlab.methods.own_state import SETTINGS_ATTR, OwnStateMethod


@register_method
class BitFitMethod(OwnStateMethod):
    name = "bitfit"
    dir_name = "BitFit"
    low_rank = False
    mergeable = True  # nothing to merge: the model keeps its shape
    delta_note = "BitFit trains only biases, so no q/k/v/o weight matrix changes"

    def apply(self, model: nn.Module, cfg) -> nn.Module:
        stash_fingerprint(model, base_fingerprint(model))
        setattr(model, SETTINGS_ATTR, {})
        trainable = {id(p) for _, p in self.trainable_parameters(model)}
        for param in model.parameters():
            param.requires_grad_(id(param) in trainable)
        return model

    def trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        classifier = classifier_module_names(model)
        return [(name, param) for name, param in model.named_parameters()
                if name.endswith(".bias") or name.split(".", 1)[0] in classifier]

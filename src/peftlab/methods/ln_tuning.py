"""LayerNorm tuning through PEFT (`LNTuningConfig(target_modules=["LayerNorm"])`): every LayerNorm's
weight and bias trains (embeddings' and each layer's two), plus the classifier; nothing else.

No weight matrix changes, so `delta_weights` is {} (measure's update step says "not applicable").
Mergeable in effect: the tuned LayerNorms replace the old ones at no inference cost.
"""

from __future__ import annotations

from peftlab.arch import classifier_module_names
from peftlab.errors import PeftlabError
from peftlab.methods.base import register_method
from peftlab.methods.peft_lora import PeftMethod


@register_method
class LnTuningMethod(PeftMethod):
    name = "ln-tuning"
    dir_name = "LNTuning"
    low_rank = False
    mergeable = True
    trainable_tokens = ("ln_tuning_layers.",)
    delta_note = "LayerNorm tuning changes only LayerNorm weights and biases, no q/k/v/o weight matrix"

    def peft_config(self, model, cfg):
        from peft import LNTuningConfig

        if not any(name.endswith("LayerNorm") for name, _ in model.named_modules()):
            raise PeftlabError(f"ln-tuning targets modules named 'LayerNorm', which this {model.config.model_type} "
                               f"model does not have; use another method")
        return LNTuningConfig(target_modules=["LayerNorm"], modules_to_save=classifier_module_names(model),
                              task_type="SEQ_CLS")

    def delta_weights(self, model_final, model_init):
        """{} — see `delta_note`."""
        return {}

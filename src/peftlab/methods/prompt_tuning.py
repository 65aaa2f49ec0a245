"""Prompt tuning through PEFT: `prompt_tokens` trained embeddings prepended to every input.

Trains the prompt embedding [prompt_tokens, hidden] (randomly initialised) and the classifier; the body
is untouched, so `delta_weights` is {} (no ΔW of any weight matrix: measure's update step says
"not applicable"). Not mergeable: every forward pass is `prompt_tokens` tokens longer.
"""

from __future__ import annotations

from peftlab.arch import classifier_module_names
from peftlab.methods.base import register_method
from peftlab.methods.peft_lora import PeftMethod


@register_method
class PromptTuningMethod(PeftMethod):
    name = "prompt-tuning"
    dir_name = "PromptTuning"
    option_keys = ("prompt_tokens",)
    low_rank = False
    mergeable = False
    trainable_tokens = ("prompt_encoder.",)
    delta_note = ("prompt tuning changes no weight matrix (it trains input embeddings prepended to the "
                  "sequence), so there is no per-head ΔW of q/k/v/o")

    def peft_config(self, model, cfg):
        from peft import PromptTuningConfig

        return PromptTuningConfig(num_virtual_tokens=int(getattr(cfg, "prompt_tokens", 20)), task_type="SEQ_CLS",
                                  modules_to_save=classifier_module_names(model))

    def delta_weights(self, model_final, model_init):
        """{} — see `delta_note`."""
        return {}

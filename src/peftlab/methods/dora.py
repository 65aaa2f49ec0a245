"""DoRA through PEFT: LoRA with a trained per-output-column magnitude (`LoraConfig(use_dora=True)`).

    W' = m · (W0 + s·B·A) / ‖W0 + s·B·A‖_col      m: [d_out] starts at ‖W0‖_col, so θ0 is unchanged.

Same rank, alpha, dropout and targets as `peft-lora`; trains lora_A, lora_B, lora_magnitude_vector and
the classifier. Mergeable; ΔW = merged W − W0 (PEFT's merge, see `PeftMethod.delta_weights`).
"""

from __future__ import annotations

from peftlab.methods.base import register_method, validate_low_rank
from peftlab.methods.peft_lora import PeftMethod, peft_lora_config


@register_method
class DoraMethod(PeftMethod):
    name = "dora"
    dir_name = "DoRA"
    low_rank = True
    option_keys = ("alpha", "dropout", "targets")  # rank is in the run-dir name already (`_r<R>`)
    trainable_tokens = ("lora_",)  # lora_A, lora_B, lora_magnitude_vector

    def peft_config(self, model, cfg):
        validate_low_rank(cfg)
        return peft_lora_config(model, cfg, use_dora=True)

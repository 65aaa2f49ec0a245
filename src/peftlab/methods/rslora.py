"""rsLoRA through PEFT: LoRA scaled by alpha / √r instead of alpha / r (`LoraConfig(use_rslora=True)`),
which keeps the update's size stable as the rank grows. Same keys and trainable set as `peft-lora`."""

from __future__ import annotations

from peftlab.methods.base import register_method, validate_low_rank
from peftlab.methods.peft_lora import PeftMethod, peft_lora_config


@register_method
class RsLoraMethod(PeftMethod):
    name = "rslora"
    dir_name = "rsLoRA"
    low_rank = True
    option_keys = ("alpha", "dropout", "targets")  # rank is in the run-dir name already (`_r<R>`)

    def peft_config(self, model, cfg):
        validate_low_rank(cfg)
        return peft_lora_config(model, cfg, use_rslora=True)

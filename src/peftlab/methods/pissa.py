"""PiSSA through PEFT: LoRA initialised from the top-r singular triplets of W0 (`init_lora_weights="pissa"`).

    W0 = U S Vᵀ;  B = U_r S_r^½ / √s,  A = S_r^½ V_rᵀ / √s;  the base weight becomes W_res = W0 − s·B·A,
so θ0 is unchanged at the start, but the *base* weight itself is no longer W0. ΔW therefore is merged W − W0
(= s·(B1A1 − B0A0)), never s·B1A1 alone (see `PeftMethod.delta_weights`). The full SVD is deterministic, so
loading re-derives W_res from θ0 and then reads the trained A, B (tested: identical logits after save/load).
"""

from __future__ import annotations

from peftlab.methods.base import register_method, validate_low_rank
from peftlab.methods.peft_lora import PeftMethod, peft_lora_config


@register_method
class PissaMethod(PeftMethod):
    name = "pissa"
    dir_name = "PiSSA"
    low_rank = True
    option_keys = ("alpha", "dropout", "targets")  # rank is in the run-dir name already (`_r<R>`)

    def peft_config(self, model, cfg):
        validate_low_rank(cfg)
        # PiSSA's A/B come from W0; LoRA dropout would make θ0's output random at the start, PEFT allows it anyway.
        return peft_lora_config(model, cfg, init_lora_weights="pissa")

"""(IA)³ through PEFT: trained vectors that rescale activations.

    attention / FFN-in targets:  y = l ⊙ (W x)          l: [d_out], starts at 1
    FFN-out targets (PEFT "feedforward" modules): y = W (l ⊙ x)   l: [d_in]
Targets are the canonical `targets` (default q,k,v,o; the paper's choice is k,v,ffn_out); `ffn_out`
targets are passed as PEFT `feedforward_modules`. Trains the `ia3_l` vectors and the classifier;
`rank`, `alpha` and `dropout` are unused. Mergeable (ΔW = merged W − W0).
"""

from __future__ import annotations

from peftlab.arch import classifier_module_names, get_arch, parse_targets, target_module_names
from peftlab.methods.base import register_method
from peftlab.methods.peft_lora import PeftMethod


@register_method
class Ia3Method(PeftMethod):
    name = "ia3"
    dir_name = "IA3"
    low_rank = False
    uses_targets = True
    option_keys = ("targets",)
    trainable_tokens = ("ia3_l",)

    def peft_config(self, model, cfg):
        from peft import IA3Config

        targets = parse_targets(cfg.targets)
        return IA3Config(
            target_modules=target_module_names(model, targets),
            feedforward_modules=target_module_names(model, ["ffn_out"]) if "ffn_out" in targets else [],
            modules_to_save=classifier_module_names(model),
            task_type="SEQ_CLS",
            fan_in_fan_out=get_arch(model).conv1d,
        )

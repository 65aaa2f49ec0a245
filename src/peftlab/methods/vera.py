"""VeRA through PEFT: frozen random low-rank matrices shared by all layers, trained scaling vectors.

    ΔW = Λ_b · B · Λ_d · A      A: [r, d_in], B: [d_out, r] random, frozen, shared (seeded by PEFT's
                                 `projection_prng_key`); Λ_d = diag(d) [r], Λ_b = diag(b) [d_out] trained.
Trains vera_lambda_b, vera_lambda_d and the classifier: r + d_out per adapted module. `rank` is the shared
projection rank (VeRA papers use large r, e.g. 256); `alpha` is unused; `dropout` → vera_dropout.
"""

from __future__ import annotations

from peftlab.arch import classifier_module_names, get_arch, parse_targets, target_module_names
from peftlab.methods.base import register_method, validate_low_rank
from peftlab.methods.peft_lora import PeftMethod


@register_method
class VeraMethod(PeftMethod):
    name = "vera"
    dir_name = "VeRA"
    low_rank = True
    option_keys = ("dropout", "targets")  # VeRA has no alpha
    trainable_tokens = ("vera_lambda_",)

    def peft_config(self, model, cfg):
        from peft import VeraConfig

        validate_low_rank(cfg)
        return VeraConfig(
            r=cfg.rank,
            vera_dropout=cfg.dropout,
            target_modules=target_module_names(model, parse_targets(cfg.targets)),
            modules_to_save=classifier_module_names(model),
            task_type="SEQ_CLS",
            fan_in_fan_out=get_arch(model).conv1d,
            projection_prng_key=int(cfg.seed),
            save_projection=True,  # the frozen A, B go into the adapter file: loading never re-draws them
        )

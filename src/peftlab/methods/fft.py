"""Full fine-tuning: every parameter trains; θ1 is saved whole with `save_pretrained` (safetensors)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from peftlab.arch import CANONICAL_TARGETS, get_submodule, target_module_names
from peftlab.errors import PeftlabError
from peftlab.methods.base import (
    FINGERPRINT_FILE,
    Method,
    base_fingerprint,
    check_same_base,
    register_method,
    require_file,
    save_pretrained_atomically,
    stash_fingerprint,
)


@register_method
class FullFineTuning(Method):
    """All parameters train; `delta_weights` = W1 − W0 for every q/k/v/o/ffn module."""

    name = "fft"
    dir_name = "FFT"
    low_rank = False

    def apply(self, model: nn.Module, cfg) -> nn.Module:
        stash_fingerprint(model, base_fingerprint(model))
        model.requires_grad_(True)
        return model

    def trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return list(model.named_parameters())

    def save_final(self, model: nn.Module, out_dir) -> None:
        save_pretrained_atomically(model, out_dir)

    def load_final(self, base_model: nn.Module, out_dir) -> nn.Module:
        from transformers import AutoModelForSequenceClassification

        from peftlab.models import quiet_transformers

        out_dir = Path(out_dir)
        saved = json.loads(require_file(out_dir / FINGERPRINT_FILE, "FFT base-model fingerprint").read_text())
        check_same_base(saved, base_model, out_dir)
        try:
            with quiet_transformers():
                model = AutoModelForSequenceClassification.from_pretrained(out_dir, dtype=base_model.dtype)
        except (OSError, ValueError) as err:
            raise PeftlabError(f"could not load the fine-tuned model in {out_dir} ({str(err).splitlines()[0]}); "
                               f"re-run training to rewrite ckpt_final") from None
        from peftlab.pooling import apply_pooling

        apply_pooling(model)  # the pooling recorded in its config.json (peftlab.pooling)
        return model.to(base_model.device).eval()

    def delta_weights(self, model_final: nn.Module, model_init: nn.Module) -> dict[str, torch.Tensor]:
        """ΔW = W1 − W0 (fp32, on the CPU) for every module of the canonical targets q, k, v, o, ffn_in, ffn_out."""
        deltas = {}
        with torch.no_grad():
            for name in target_module_names(model_init, CANONICAL_TARGETS):
                w1 = get_submodule(model_final, name).weight
                w0 = get_submodule(model_init, name).weight
                if w1.shape != w0.shape:
                    raise PeftlabError(f"'{name}' has shape {tuple(w1.shape)} in θ1 but {tuple(w0.shape)} in θ0; "
                                       f"pass θ0 and θ1 of the same run")
                deltas[name] = w1.detach().float().cpu() - w0.detach().float().cpu()
        return deltas

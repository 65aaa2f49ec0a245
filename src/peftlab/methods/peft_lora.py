"""LoRA through the PEFT library — the reference that peftlab's own LoRA is tested against.

`target_modules` gets *full* module names from `peftlab.arch.target_module_names`: PEFT matches
by exact name or `.suffix`, so a bare "dense" would also hit the FFN and the pooler.
`modules_to_save` = the classifier modules: PEFT trains a copy (`modules_to_save.default`) and
saves it with the adapter; it is not merged. θ1 is saved with PEFT's `save_pretrained`
(`adapter_model.safetensors` + `adapter_config.json`) plus `peftlab_base.json` (fingerprint).
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from peftlab.arch import classifier_module_names, get_arch, get_submodule, parse_targets, target_module_names
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
    validate_low_rank,
)

# PEFT 0.21 reads `model.is_gradient_checkpointing`, which transformers 5 deprecates with a FutureWarning on
# every wrap and load; it says nothing to a peftlab user, so that one message is silenced.
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*is deprecated", category=FutureWarning)

ADAPTER = "default"  # PEFT's adapter name


def peft_lora_config(model: nn.Module, cfg, **variant):
    """The PEFT `LoraConfig` equivalent to peftlab's `lora` method with the same cfg (+ `variant` options:
    use_dora, use_rslora, init_lora_weights)."""
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=target_module_names(model, parse_targets(cfg.targets)),
        modules_to_save=classifier_module_names(model),
        task_type="SEQ_CLS",
        fan_in_fan_out=get_arch(model).conv1d,  # GPT-2 Conv1D weights are [d_in, d_out]
        **variant,
    )


def peft_delta_weights(model_final, model_init, label: str) -> dict:
    """ΔW of every PEFT low-rank layer from its own `get_delta_weight` in fp32, keyed by HF module name.

    A layer holding any non-fp32 tensor is copied to fp32 first, so ΔW is never computed in low precision
    (it is what `merge` adds to the base weight: merged − base). Shared by PEFT LoRA and AdaLoRA.
    """
    deltas = {}
    for name, layer in peft_lora_layers(model_final):
        if any(p.dtype != torch.float32 for p in layer.parameters()):
            layer = copy.deepcopy(layer).float()
        with torch.no_grad():
            delta = layer.get_delta_weight(ADAPTER).detach().float()  # Linear [d_out, d_in]; Conv1D [d_in, d_out]
        init_weight = get_submodule(model_init, name).weight
        if delta.shape != init_weight.shape:
            raise PeftlabError(f"{label} update of '{name}' has shape {tuple(delta.shape)} but θ0's weight "
                               f"is {tuple(init_weight.shape)}; pass the θ0 model of the same run")
        deltas[name] = delta.cpu()
    return deltas


def peft_lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(HF module name, PEFT LoRA layer) for every adapted module of a PEFT model."""
    from peft.tuners.lora import LoraLayer

    hf_model = model.base_model.model  # PeftModel -> LoraModel -> the HF model, names as before wrapping
    return [(name, module) for name, module in hf_model.named_modules()
            if isinstance(module, LoraLayer) and ADAPTER in module.lora_A]


class PeftMethod(Method):
    """A method implemented by a PEFT tuner: subclasses give `peft_config(model, cfg)` and `trainable_tokens`.

    Shared by `peft-lora` and its variants (`dora`, `rslora`, `pissa`, `vera`, `ia3`, `prompt-tuning`,
    `ln-tuning`): apply = `get_peft_model` with the RNG seeded from cfg.seed; save = PEFT's
    `save_pretrained` + fingerprint; load = `PeftModel.from_pretrained` on θ0.
    """

    # Substrings of the parameter names this tuner trains (the classifier copy is always added).
    trainable_tokens: tuple[str, ...] = ("lora_",)
    mergeable = True  # PEFT can fold the update into the base weights (`merge_and_unload`)

    def peft_config(self, model: nn.Module, cfg):
        raise NotImplementedError

    def apply(self, model: nn.Module, cfg) -> nn.Module:
        from peft import get_peft_model

        config = self.peft_config(model, cfg)
        fingerprint = base_fingerprint(model)
        # PEFT draws its init from the global RNG: seed it from cfg.seed without disturbing the caller's RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.seed))
            peft_model = get_peft_model(model, config)
        stash_fingerprint(peft_model, fingerprint)
        return peft_model

    def trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        tokens = self.trainable_tokens + (".modules_to_save.",)
        return [(name, param) for name, param in model.named_parameters() if any(t in name for t in tokens)]

    def save_final(self, model: nn.Module, out_dir) -> None:
        save_pretrained_atomically(model, out_dir)

    def load_final(self, base_model: nn.Module, out_dir) -> nn.Module:
        from peft import PeftModel

        out_dir = Path(out_dir)
        require_file(out_dir / "adapter_config.json", "PEFT adapter config")
        saved = json.loads(require_file(out_dir / FINGERPRINT_FILE, f"{self.dir_name} base-model fingerprint").read_text())
        check_same_base(saved, base_model, out_dir)
        fingerprint = base_fingerprint(base_model)
        model = PeftModel.from_pretrained(base_model, str(out_dir))
        stash_fingerprint(model, fingerprint)
        return model.eval()

    def delta_weights(self, model_final: nn.Module, model_init: nn.Module) -> dict[str, torch.Tensor]:
        """ΔW = W(merged θ1) − W0 in fp32 per adapted module: each PEFT layer is copied to fp32 and merged with
        PEFT's own `merge` (so DoRA's magnitude, VeRA's scaling vectors, IA3's scaling and PiSSA's residual base
        are all included), then θ0's weight is subtracted. Empty for tuners without weight layers (prompt tuning)."""
        return merged_deltas(model_final, model_init)


def merged_deltas(model_final: nn.Module, model_init: nn.Module) -> dict[str, torch.Tensor]:
    """{HF module name: merged weight − θ0 weight (fp32, CPU)} for every PEFT tuner layer that can merge."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    hf_model = model_final.base_model.model if hasattr(model_final, "base_model") else model_final
    deltas = {}
    for name, layer in hf_model.named_modules():
        if not isinstance(layer, BaseTunerLayer) or not hasattr(layer.get_base_layer(), "weight"):
            continue
        if ADAPTER not in getattr(layer, "active_adapters", [ADAPTER]):
            continue
        if type(layer).__name__.startswith("LNTuning"):
            continue  # LayerNorm tuning replaces a LayerNorm; it has no weight matrix to diff
        merged = copy.deepcopy(layer).float()
        with torch.no_grad():
            merged.merge(adapter_names=[ADAPTER])
            w1 = merged.get_base_layer().weight.detach().float()
        w0 = get_submodule(model_init, name).weight.detach().float()
        if w1.shape != w0.shape:
            raise PeftlabError(f"merged weight of '{name}' has shape {tuple(w1.shape)} but θ0's weight is "
                               f"{tuple(w0.shape)}; pass the θ0 model of the same run")
        deltas[name] = (w1.cpu() - w0.cpu())
    return deltas


@register_method
class PeftLoraMethod(PeftMethod):
    """LoRA via `peft.get_peft_model`, on the same canonical targets as `lora`."""

    name = "peft-lora"
    dir_name = "PEFT-LoRA"
    low_rank = True
    option_keys = ("alpha", "dropout", "targets")  # rank is in the run-dir name already (`_r<R>`)

    def peft_config(self, model: nn.Module, cfg):
        validate_low_rank(cfg)
        return peft_lora_config(model, cfg)

    def delta_weights(self, model_final: nn.Module, model_init: nn.Module) -> dict[str, torch.Tensor]:
        """ΔW per adapted module from PEFT's own `get_delta_weight(adapter)` (scale, fan_in_fan_out and any
        variant handled by PEFT), in fp32 on the CPU, keyed by HF module name.

        A layer whose adapter weights are not fp32 is copied to fp32 first, so ΔW is never computed in
        low precision (it is what `merge` adds to the base weight: merged − base).
        """
        return peft_delta_weights(model_final, model_init, "PEFT LoRA")

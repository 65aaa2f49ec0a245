"""AdaLoRA through PEFT (`peft.AdaLoraConfig`), with a choice of rank-allocation signal.

PEFT's AdaLoRA matrix: ΔW = B·diag(E)·A · scaling / (ranknum + 1e-5) with A [r, in], E [r, 1],
B [out, r], scaling = lora_alpha, ranknum = init_r (fixed). Ranks are *masked* (E_i = 0) during
training; `save_pretrained` drops masked triplets (PEFT's rank_pattern), and loading resizes the
layers back to that pattern, so a saved run holds its final ranks only.

The Trainer calls `model.base_model.update_and_allocate(step)` from `AdaLoraCallback.on_optimizer_step`
(after `optimizer.step()`, before `zero_grad()`: gradients still exist). `step` = optimizer steps done
including this one (`state.global_step + 1`, as `global_step` is incremented only after that hook).
The schedule needs the real number of steps, so `total_step`, `tinit` and `tfinal` are set on PEFT's
config when training starts (from `state.max_steps`); `apply` builds the model with a placeholder.

Dev loss = task loss alone: PEFT adds `orth_reg_weight · R(A, B)` to `outputs.loss` whenever labels
are given, in eval mode too; a forward pre-hook sets the weight to 0 while the model is in eval mode
(and restores it). A training forward without labels (label smoothing, `compute_loss_func`) would
silently skip the regulariser, so it raises instead.

A killed AdaLoRA run does not resume (`resumable = False`): the allocator's EMAs and rank pattern are
not in Trainer checkpoints, so a resumed run would allocate differently from an uninterrupted one.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from peftlab.arch import classifier_module_names, get_arch, parse_targets, target_module_names
from peftlab.errors import PeftlabError
from peftlab.methods.base import base_fingerprint, register_method, stash_fingerprint
from peftlab.methods.peft_lora import ADAPTER, PeftLoraMethod

_PLACEHOLDER_STEPS = 10**9  # PEFT requires total_step > tinit + tfinal at build time; the real one is set later


def resolve_schedule(cfg, total_steps: int) -> tuple[int, int]:
    """(tinit, tfinal) in optimizer steps: a value in (0, 1) is a fraction of `total_steps` (rounded),
    anything else a whole number of steps. PeftlabError when no step is left for the budget decrease."""
    def steps(value) -> int:
        return int(round(value * total_steps)) if 0 < value < 1 else int(value)

    tinit, tfinal = steps(cfg.tinit), steps(cfg.tfinal)
    if tinit >= total_steps - tfinal:
        raise PeftlabError(
            f"AdaLoRA schedule does not fit: tinit={tinit} >= total steps {total_steps} - tfinal={tfinal}, leaving no "
            f"step to reduce ranks; lower tinit/tfinal (e.g. tinit=0.1 tfinal=0.3) or train longer"
        )
    return tinit, tfinal


def adalora_config(model: nn.Module, cfg):
    """PEFT `AdaLoraConfig` for `cfg` (total_step is a placeholder until training starts)."""
    from peft import AdaLoraConfig

    return AdaLoraConfig(
        init_r=cfg.init_r, target_r=cfg.target_r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
        tinit=0, tfinal=0, deltaT=cfg.deltaT, beta1=cfg.beta1, beta2=cfg.beta2,
        orth_reg_weight=cfg.orth_reg_weight, total_step=_PLACEHOLDER_STEPS,
        target_modules=target_module_names(model, parse_targets(cfg.targets)),
        modules_to_save=classifier_module_names(model),
        task_type="SEQ_CLS",
        fan_in_fan_out=get_arch(model).conv1d,
    )


def install_task_loss_in_eval(peft_model: nn.Module) -> None:
    """Hooks on the AdaLoraModel: orth_reg_weight = 0 in eval mode; a training forward needs labels."""
    adalora = peft_model.base_model
    if getattr(adalora, "_peftlab_eval_hooks", False):
        return
    config = adalora.peft_config[adalora.trainable_adapter_name]

    def pre_hook(module, args, kwargs):
        if module.training and kwargs.get("labels") is None:
            raise PeftlabError("AdaLoRA needs the model to compute its own loss (it adds the orthogonal regulariser "
                               "there); label smoothing / compute_loss_func pop the labels, so turn them off")
        if not module.training:
            module._peftlab_orth = config.orth_reg_weight
            config.orth_reg_weight = 0.0

    def post_hook(module, args, kwargs, output):
        if hasattr(module, "_peftlab_orth"):
            config.orth_reg_weight = module.__dict__.pop("_peftlab_orth")
        return output

    adalora.register_forward_pre_hook(pre_hook, with_kwargs=True)
    adalora.register_forward_hook(post_hook, with_kwargs=True, always_call=True)
    adalora._peftlab_eval_hooks = True


def rank_per_module(peft_model: nn.Module) -> dict[str, int]:
    """{HF module name: rank} from PEFT's current rank pattern (init_r everywhere before the first allocation).

    Not from E ≠ 0: between allocations a masked E_i still gets a gradient and moves off 0.
    """
    from peftlab.methods.adalora_signals import module_of

    adalora = peft_model.base_model
    pattern = adalora.peft_config[adalora.trainable_adapter_name].rank_pattern
    ranks = {module_of(name): int(param.shape[0])
             for name, param in adalora.model.named_parameters() if f"lora_E.{ADAPTER}" in name}
    for key, kept in (pattern or {}).items():
        ranks[module_of(key)] = int(sum(bool(k) for k in kept))
    return ranks


@register_method
class AdaLoraMethod(PeftLoraMethod):
    """AdaLoRA via `peft.get_peft_model(AdaLoraConfig)`; save/load/ΔW as PEFT LoRA (PEFT's own layers)."""

    name = "adalora"
    dir_name = "ADALORA"
    low_rank = False  # the rank is adaptive: run dir ADALORA/<TASK>/<signal>/seed<S>
    dir_keys = ("signal",)
    # Not LoRA's alpha/dropout/targets: the ADALORA/<TASK>/<signal>/seed<S> layout is read by `adalora compare`;
    # a finished run with other settings is refused rather than reused (training/loop.py `finished_run_diff`).
    option_keys: tuple[str, ...] = ()
    resumable = False

    def apply(self, model: nn.Module, cfg) -> nn.Module:
        from peft import get_peft_model

        from peftlab.config import _validate_adalora

        _validate_adalora(cfg)
        config = adalora_config(model, cfg)
        fingerprint = base_fingerprint(model)
        with torch.random.fork_rng(devices=[]):  # A, B ~ N(0, 0.02) from a seeded RNG, caller's RNG untouched
            torch.manual_seed(int(cfg.seed))
            peft_model = get_peft_model(model, config)
        install_task_loss_in_eval(peft_model)
        stash_fingerprint(peft_model, fingerprint)
        return peft_model

    def save_final(self, model: nn.Module, out_dir) -> None:
        # A matrix AdaLoRA shrank to rank 0 is saved as lora_A (0, in) / lora_B (out, 0), which PEFT reports as
        # "invalid shape ... DeepSpeed ZeRO-3 / FSDP" — wrong for AdaLoRA, where rank 0 is a legitimate result.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LoRA tensor\(s\) have invalid shape.*")
            super().save_final(model, out_dir)

    def load_final(self, base_model: nn.Module, out_dir) -> nn.Module:
        with warnings.catch_warnings():  # LoRA's per-module `rank_pattern` check misreads AdaLoRA's masks
            warnings.filterwarnings("ignore", message=r".*rank_pattern keys did not match.*")
            model = super().load_final(base_model, out_dir)  # PEFT resizes the layers to the saved rank pattern
        # PEFT 0.21 sets `trainable_adapter_name` only for a trainable adapter, yet its forward reads it whenever
        # labels are given: without it a loaded model fails on `model(**batch, labels=...)`.
        if "trainable_adapter_name" not in model.base_model.__dict__:
            model.base_model.trainable_adapter_name = ADAPTER
        install_task_loss_in_eval(model)
        return model

    def delta_weights(self, model_final: nn.Module, model_init: nn.Module) -> dict[str, torch.Tensor]:
        """ΔW = B·(A⊙E)·scaling / (ranknum + 1e-5) per adapted module: PEFT's `SVDLinear.get_delta_weight`,
        computed in fp32 (a low-precision layer is copied to fp32 first) = merged − base. Keyed by HF name."""
        from peftlab.methods.peft_lora import peft_delta_weights

        return peft_delta_weights(model_final, model_init, "AdaLoRA")

    def preflight(self, cfg, total_steps: int) -> None:
        resolve_schedule(cfg, total_steps)

    def callbacks(self, cfg, total_steps: int) -> list:
        from peftlab.methods.adalora_callback import AdaLoraCallback
        from peftlab.runs import run_dir_for

        return [AdaLoraCallback(cfg, run_dir_for(cfg))]

    def finish(self, run_dir: Path, final_metrics: dict) -> None:
        from peftlab.methods.adalora_callback import write_final_summary

        write_final_summary(Path(run_dir), final_metrics)


__all__ = ["AdaLoraMethod", "resolve_schedule", "adalora_config", "rank_per_module", "install_task_loss_in_eval"]

"""peftlab's own LoRA, from scratch: the `LoraLinear` wrapper and the `lora` method.

    y = base(x) + scale · B · A · dropout(x),   scale = alpha / r
    A: [r, d_in]  kaiming-uniform(a=√5) — the init PEFT uses by default (that of nn.Linear's weight)
    B: [d_out, r] zeros, so θ0 is unchanged when training starts.

Written by hand (PEFT implements the same) so that the method is small, readable and testable
against PEFT: `tests/test_methods.py` shows identical logits and A/B gradients when both hold the
same A and B. The wrapper stays at the wrapped module's path and keeps it as `.base_layer`, so head
gates hooked on the outer module gate the LoRA branch too. It wraps `nn.Linear` (any shape) and
GPT-2's `Conv1D` (weight `[d_in, d_out]`, `fan_in_fan_out`).

Training speed (issue 13; numbers in benchmarks/README.md). On the CPU, dropout masks are the
largest single cost of a step, so by default (FAST_DROPOUT, SHARE_QKV):
- the branch dropout is `FastDropout`: the same inverted-Bernoulli distribution as `nn.Dropout`
  from bulk-generated bits, ~4x cheaper than `bernoulli_`; a different random stream than PEFT's;
- q, k and v of a layer, which read the same hidden states, form a `SharedInputGroup`: ONE dropout
  mask and one `x @ [A_q; A_k; A_v]ᵀ` for the three (loralib's fused-qkv behaviour; PEFT draws
  three masks). With dropout off both are exact no-ops up to GEMM rounding.
`cfg.lora_fast_dropout = False, cfg.lora_share_qkv = False` give PEFT's behaviour mask for mask
(tested). Both settings are recorded in adapter_config.json.

Only LoRA tensors and the classifier train. Saved as `adapter.safetensors` (`lora_*` tensors and
classifier tensors, keyed by parameter name) + `adapter_config.json` (method, rank, alpha,
dropout, targets, target module names, base fingerprint — see `methods/base.py`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

from peftlab.arch import (
    classifier_module_names,
    find_layers,
    get_arch,
    get_submodule,
    parse_targets,
    target_module_names,
)
from peftlab.errors import PeftlabError
from peftlab.fast_dropout import FastDropout
from peftlab.methods.base import (
    Method,
    base_fingerprint,
    check_same_base,
    register_method,
    require_file,
    stash_fingerprint,
    stashed_fingerprint,
    validate_low_rank,
)

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# Training-speed options (issue 13; measured in benchmarks/README.md). Neither changes results when
# dropout = 0; with dropout on they change which random masks are drawn (see FastDropout, SharedInputGroup).
FAST_DROPOUT = True  # bulk-generated dropout masks on the CPU instead of nn.Dropout's bernoulli_
SHARE_QKV = True  # q, k, v of a layer share one dropout mask and one x @ [A_q; A_k; A_v]ᵀ
INIT_NOTE = "A ~ kaiming_uniform(a=sqrt(5)) seeded by cfg.seed, B = 0 (PEFT's default LoRA init)"


def _conv1d_type():
    from transformers.pytorch_utils import Conv1D

    return Conv1D


def drop_unscaled(dropout: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(dropped x, scale still to apply): `FastDropout` defers its scale, other modules apply it (scale 1)."""
    if isinstance(dropout, FastDropout):
        return dropout.drop(x)
    return dropout(x), 1.0


class _LowRankAdd(torch.autograd.Function):
    """`base + s · h Bᵀ` with backward GEMMs laid out for wide outputs (CPU).

    Autograd's own `addmm` backward computes ∂h = G B ([T, d_out] × [d_out, r]) and ∂B = Gᵀ h
    ([d_out, T] × [T, r]): GEMMs whose output has r (= 8) columns, which the CPU BLAS runs far
    below its peak. The same products as (Bᵀ Gᵀ)ᵀ and (hᵀ G)ᵀ have T or d_out columns and ran 2× and
    5× faster single-threaded (T = 2048, d = 384, r = 8; `benchmarks/README.md`). Same arithmetic,
    different summation order: equal up to fp32 rounding.
    """

    @staticmethod
    def forward(ctx, base: torch.Tensor, h: torch.Tensor, lora_B: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(h, lora_B)
        ctx.scale = scale
        return torch.addmm(base, h, lora_B.T, alpha=scale)  # [T, d_out]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, lora_B = ctx.saved_tensors  # h [T, r], lora_B [d_out, r]
        grad_h = grad_B = None
        if ctx.needs_input_grad[1]:
            grad_h = torch.mm(lora_B.T * ctx.scale, grad.T).T  # [r, T] -> [T, r]
        if ctx.needs_input_grad[2]:
            grad_B = torch.mm(h.T * ctx.scale, grad).T  # [r, d_out] -> [d_out, r]
        return grad, grad_h, grad_B, None


def make_lora_dropout(p: float, fast: bool = True) -> nn.Module:
    """Identity at p = 0 (saves a copy of x per call), else `FastDropout` or `nn.Dropout` (`fast=False`)."""
    if p <= 0:
        return nn.Identity()
    return FastDropout(p) if fast else nn.Dropout(p)


class LoraLinear(nn.Module):
    """`base_layer(x) + scale · (dropout(x) @ Aᵀ) @ Bᵀ` around an `nn.Linear` or GPT-2 `Conv1D`."""

    def __init__(self, base_layer: nn.Module, rank: int, alpha: float, dropout: float,
                 generator: torch.Generator | None = None, fast_dropout: bool = True):
        super().__init__()
        weight = base_layer.weight
        if isinstance(base_layer, _conv1d_type()):
            d_in, d_out = weight.shape  # Conv1D weight is [d_in, d_out]
            self.fan_in_fan_out = True
        elif isinstance(base_layer, nn.Linear):
            d_out, d_in = weight.shape  # Linear weight is [d_out, d_in]
            self.fan_in_fan_out = False
        else:
            raise PeftlabError(
                f"LoRA can wrap nn.Linear or GPT-2 Conv1D, not {type(base_layer).__name__}; "
                f"choose targets that are linear projections"
            )
        self.base_layer = base_layer
        self.rank, self.alpha, self.scaling = rank, float(alpha), float(alpha) / rank
        self.d_in, self.d_out = d_in, d_out
        # Initialise A on the CPU with a seeded generator (reproducible, leaves the global RNG alone),
        # then move it next to the base weight.
        lora_A = torch.empty(rank, d_in, dtype=torch.float32)
        nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5), generator=generator)
        self.lora_A = nn.Parameter(lora_A.to(device=weight.device, dtype=weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(d_out, rank, device=weight.device, dtype=weight.dtype))
        self.lora_dropout = make_lora_dropout(dropout, fast_dropout)
        self.merged = False
        self.input_group: SharedInputGroup | None = None  # set by `share_inputs` (plain attribute, no state)

    def lora_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(dropped(x) @ Aᵀ [..., r], dropout scale still to apply) — the rank-r intermediate of the branch."""
        group = self.input_group
        # Inference tensors (torch.inference_mode) carry no version counter, which the group's cache keys on;
        # there is no dropout mask to share then either, so each module takes its own branch.
        if group is not None and not x.is_inference() and not any(m.merged for m in group.members):
            return group.lora_hidden(self, x)
        dropped, scale = drop_unscaled(self.lora_dropout, x)
        return F.linear(dropped, self.lora_A), scale  # [..., r]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged:
            return result
        # (x Aᵀ) Bᵀ: the rank-r intermediate keeps the branch at r·(d_in + d_out) MACs per token.
        h, drop_scale = self.lora_hidden(x)  # [..., r]
        # addmm adds scale·h Bᵀ onto the base output inside the GEMM: no separate scale and add
        # passes over [tokens, d_out] (PEFT does `result + B(A(x)) * scale`). Measured ~6 % faster
        # per wrapped 384×384 layer (fwd + bwd, 16×128 tokens, paired reps); equal up to fp rounding.
        # The dropout's 1 / (1 − p) rides along in alpha (see FastDropout.drop).
        scale = self.scaling * drop_scale
        result_2d, h_2d = result.reshape(-1, self.d_out), h.reshape(-1, self.rank)  # [tokens, d_out], [tokens, r]
        if result.device.type == "cpu" and torch.is_grad_enabled() and (h.requires_grad or self.lora_B.requires_grad):
            out = _LowRankAdd.apply(result_2d, h_2d, self.lora_B, scale)  # [tokens, d_out]
        else:  # GPU BLAS, inference: autograd's own addmm
            out = torch.addmm(result_2d, h_2d, self.lora_B.T, alpha=scale)  # [tokens, d_out]
        return out.view(result.shape)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = scale · B @ A in fp32, laid out like `base_layer.weight` ([d_out, d_in]; Conv1D [d_in, d_out])."""
        delta = (self.lora_B.detach().float() @ self.lora_A.detach().float()) * self.scaling  # [d_out, d_in]
        return delta.T.contiguous() if self.fan_in_fan_out else delta

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W + ΔW; forward then runs the base layer alone. No-op when already merged."""
        if not self.merged:
            weight = self.base_layer.weight
            weight.add_(self.delta_weight().to(device=weight.device, dtype=weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W ← W − ΔW (restores W up to fp rounding). No-op when not merged."""
        if self.merged:
            weight = self.base_layer.weight
            weight.sub_(self.delta_weight().to(device=weight.device, dtype=weight.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, d_in={self.d_in}, d_out={self.d_out}, merged={self.merged}"


class SharedInputGroup:
    """LoRA wrappers that read the same input (q, k, v of one attention layer): one mask, one matmul.

    The first member called with a new `x` computes `dropout(x) @ [A_1; …; A_n]ᵀ` — ONE dropout mask
    and one [tokens, d_in] × [d_in, n·r] GEMM instead of n of each — and every member takes its
    r columns. This is loralib's fused-qkv behaviour and a deliberate difference from PEFT, which
    draws a mask per module: q, k and v see the *same* dropped x. With dropout off (or in eval
    mode) the result equals the per-module branch up to GEMM rounding. Each member keeps its own
    `lora_A`/`lora_B` (gradients reach them through the concatenation), so names, saved files and
    ΔW are unchanged. The cache is keyed by the tensor object `x` (and its version, grad mode and
    train mode); it is released once every member has read it, and a member called twice on the
    same `x` draws afresh, so a module called alone behaves like the per-module branch.
    """

    def __init__(self, members: list["LoraLinear"]):
        ranks = {m.rank for m in members}
        d_ins = {m.d_in for m in members}
        if len(ranks) != 1 or len(d_ins) != 1:
            raise PeftlabError(f"LoRA modules sharing an input need one rank and input size; got ranks "
                               f"{sorted(ranks)} and input sizes {sorted(d_ins)}")
        self.members = members
        self._key: tuple | None = None
        self._hidden: tuple[torch.Tensor, ...] = ()
        self._scale = 1.0
        self._served: set[int] = set()

    def __getstate__(self) -> dict:
        # deepcopy / pickle: members only — a half-read cache holds graph tensors that cannot be copied.
        return {"members": self.members, "_key": None, "_hidden": (), "_scale": 1.0, "_served": set()}

    def lora_hidden(self, member: "LoraLinear", x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(member's [..., r] slice of dropped(x) @ [A_1; …; A_n]ᵀ, dropout scale still to apply)."""
        index = next(i for i, m in enumerate(self.members) if m is member)
        key = (x._version, torch.is_grad_enabled(), member.training)
        if self._key is None or self._key[0] is not x or self._key[1:] != key or index in self._served:
            lora_A = torch.cat([m.lora_A for m in self.members])  # n × [r, d_in] -> [n·r, d_in]
            dropped, self._scale = drop_unscaled(member.lora_dropout, x)
            hidden = F.linear(dropped, lora_A)  # [..., n·r]
            self._hidden = hidden.split(member.rank, dim=-1)  # n × [..., r]
            self._key, self._served = (x, *key), set()
        self._served.add(index)
        out = self._hidden[index], self._scale
        if len(self._served) == len(self.members):  # everyone has read it: drop the references to x
            self._key, self._hidden = None, ()
        return out


def share_inputs(model: nn.Module, targets) -> list[list[str]]:
    """Group the q/k/v LoRA wrappers of each layer into a `SharedInputGroup`; returns the groups' names.

    Only q, k and v read one tensor (the layer's hidden states); GPT-2's fused `c_attn` is one module
    already, so it gets no group.
    """
    spec = get_arch(model)
    layers_name, layers = find_layers(model)
    wanted = [t for t in ("q", "k", "v") if t in parse_targets(targets)]
    groups = []
    for layer in range(len(layers)):
        names = list(dict.fromkeys(f"{layers_name}.{layer}.{path}" for t in wanted for path in spec.paths[t]))
        members = [get_submodule(model, name) for name in names]
        if len(members) > 1 and all(isinstance(m, LoraLinear) for m in members):
            group = SharedInputGroup(members)
            for member in members:
                member.input_group = group
            groups.append(names)
    return groups


def lora_modules(model: nn.Module) -> list[tuple[str, LoraLinear]]:
    """(module name, LoraLinear) for every wrapper in `model`, in module order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLinear)]


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA branch into its base weight (in place); returns `model`."""
    for _, module in lora_modules(model):
        module.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo `merge_lora` (in place); returns `model`."""
    for _, module in lora_modules(model):
        module.unmerge()
    return model


def add_lora(model: nn.Module, module_names: list[str], rank: int, alpha: float, dropout: float,
             seed: int, fast_dropout: bool = True) -> list[str]:
    """Replace each named module by a `LoraLinear` around it; A drawn in `module_names` order from `seed`.

    `fast_dropout=False` uses `nn.Dropout` (the same random stream as PEFT LoRA) instead of `FastDropout`.
    """
    generator = torch.Generator().manual_seed(int(seed))
    for name in module_names:
        module = get_submodule(model, name)
        if isinstance(module, LoraLinear):
            raise PeftlabError(f"'{name}' already has LoRA; apply the lora method to a plain base model only")
        parent_name, _, child = name.rpartition(".")
        parent = get_submodule(model, parent_name) if parent_name else model
        setattr(parent, child, LoraLinear(module, rank, alpha, dropout, generator, fast_dropout))
    return module_names


def lora_speed_options(cfg) -> tuple[bool, bool]:
    """(fast_dropout, share_qkv) from optional `cfg.lora_fast_dropout` / `cfg.lora_share_qkv`.

    Defaults: FAST_DROPOUT and SHARE_QKV. TrainConfig has no such fields yet, so training runs use
    the defaults; the benchmark and tests set them on a namespace.
    """
    fast = getattr(cfg, "lora_fast_dropout", None)
    share = getattr(cfg, "lora_share_qkv", None)
    return (FAST_DROPOUT if fast is None else bool(fast)), (SHARE_QKV if share is None else bool(share))


@register_method
class LoraMethod(Method):
    """peftlab's from-scratch LoRA on the canonical targets; classifier trains fully."""

    name = "lora"
    dir_name = "LoRA"
    low_rank = True
    option_keys = ("alpha", "dropout", "targets")  # rank is in the run-dir name already (`_r<R>`)

    def apply(self, model: nn.Module, cfg) -> nn.Module:
        validate_low_rank(cfg)
        targets = parse_targets(cfg.targets)
        names = target_module_names(model, targets)
        fingerprint = base_fingerprint(model)
        fast_dropout, share_qkv = lora_speed_options(cfg)
        model.requires_grad_(False)
        add_lora(model, names, cfg.rank, cfg.alpha, cfg.dropout, cfg.seed, fast_dropout)
        if share_qkv:
            share_inputs(model, targets)
        for name in classifier_module_names(model):
            model.get_submodule(name).requires_grad_(True)
        stash_fingerprint(model, fingerprint)
        # What save_final writes into adapter_config.json (the two speed options are provenance only:
        # they change how dropout masks are drawn in training, not the saved tensors).
        model.peftlab_lora_config = {"rank": cfg.rank, "alpha": float(cfg.alpha), "dropout": float(cfg.dropout),
                                     "targets": list(targets), "target_modules": names,
                                     "fast_dropout": fast_dropout, "share_qkv": share_qkv}
        return model

    def trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        classifier = classifier_module_names(model)
        return [(name, param) for name, param in model.named_parameters()
                if "lora_" in name or name.split(".", 1)[0] in classifier]

    def save_final(self, model: nn.Module, out_dir) -> None:
        from safetensors.torch import save

        from peftlab.io import atomic_write_bytes, atomic_write_json

        out_dir = Path(out_dir)
        settings = getattr(model, "peftlab_lora_config", None)
        if settings is None:
            raise PeftlabError("this model has no peftlab LoRA applied; call get_method('lora').apply(model, cfg) first")
        tensors = {name: param.detach().cpu().contiguous() for name, param in self.trainable_parameters(model)}
        config = {"method": self.name, **settings, "init": INIT_NOTE,
                  "base_model": stashed_fingerprint(model), "format": 1}
        # Weights first, config last: a directory with a config always has its weights.
        atomic_write_bytes(out_dir / ADAPTER_WEIGHTS, save(tensors, metadata={"format": "pt"}))
        atomic_write_json(out_dir / ADAPTER_CONFIG, config)

    def load_final(self, base_model: nn.Module, out_dir) -> nn.Module:
        from safetensors.torch import load_file

        out_dir = Path(out_dir)
        config = json.loads(require_file(out_dir / ADAPTER_CONFIG, "LoRA adapter config").read_text())
        weights_path = require_file(out_dir / ADAPTER_WEIGHTS, "LoRA adapter weights")
        if config.get("method") != self.name:
            raise PeftlabError(f"{out_dir} holds a '{config.get('method')}' result, not '{self.name}'; "
                               f"load it with that method")
        check_same_base(config["base_model"], base_model, out_dir)
        cfg = SimpleNamespace(rank=config["rank"], alpha=config["alpha"], dropout=config["dropout"],
                              targets=tuple(config["targets"]), seed=0,
                              lora_fast_dropout=config.get("fast_dropout"), lora_share_qkv=config.get("share_qkv"))
        model = self.apply(base_model, cfg)
        if model.peftlab_lora_config["target_modules"] != config["target_modules"]:
            raise PeftlabError(f"{out_dir} adapts {len(config['target_modules'])} modules starting "
                               f"{config['target_modules'][:2]} but this base model maps its targets elsewhere; "
                               f"use the base model the adapter was trained on")
        tensors = load_file(str(weights_path))
        expected = {name for name, _ in self.trainable_parameters(model)}
        if set(tensors) != expected:
            missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
            raise PeftlabError(f"{weights_path} does not match the adapted model (missing {missing[:3]}, "
                               f"unexpected {extra[:3]}); re-save the adapter with this peftlab version")
        model.load_state_dict(tensors, strict=False)
        return model.eval()

    def delta_weights(self, model_final: nn.Module, model_init: nn.Module) -> dict[str, torch.Tensor]:
        """ΔW = scale · B @ A (fp32, on the CPU) per adapted module, keyed by its HF module name.

        `model_init` is only used to check that each ΔW has the shape of θ0's weight.
        """
        deltas = {}
        for name, module in lora_modules(model_final):
            delta = module.delta_weight()
            init_weight = get_submodule(model_init, name)
            init_weight = getattr(init_weight, "base_layer", init_weight).weight
            if delta.shape != init_weight.shape:
                raise PeftlabError(f"LoRA update of '{name}' has shape {tuple(delta.shape)} but θ0's weight is "
                                   f"{tuple(init_weight.shape)}; pass the θ0 model of the same run")
            deltas[name] = delta.cpu()
        return deltas


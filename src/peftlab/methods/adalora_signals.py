"""Rank-allocation signals for AdaLoRA: subclasses of PEFT's `RankAllocator` (PEFT itself is not forked).

An AdaLoRA matrix is ΔW = B·diag(E)·A; triplet i of a module is (A's row i, E_i, B's column i).
Every signal first keeps an element-wise score s(p) for each of A, E, B, then aggregates it to one
score per triplet exactly as PEFT's `mask_to_budget`/`_combine_ipt` do:

    T_i = s(E)_i + mean_j s(A)_{i,j} + mean_j s(B)_{j,i}

Signals (`signal` config key):
  baseline_adalora  PEFT's own: s = EMA_β1(|w·g|) × EMA_β2(| |w·g| − EMA_β1(|w·g|) |), masking with
                    PEFT's `kthvalue` threshold (ties may mask more than asked). Only recorded, never changed.
  importance_only   s = EMA_d(|w·g|)        (first-order sensitivity, no uncertainty term)
  plasticity_only   s = EMA_d(|g|)          (how hard the loss pulls on the weight)
  combo             T = z(T_importance) + λ·z(T_plasticity), z over all triplets of all modules at
                    this allocation: z(x) = (x − mean x) / std x (population std; 0 when std = 0)
with g = ∂L/∂w of the step just taken, d = `ema_decay`, λ = `combo_lambda`, EMAs starting at 0 (as PEFT's).
The three new signals keep exactly `budget` triplets (stable sort, ties → lower index first).
Every allocator keeps PEFT's EMAs *and* the |w·g|, |g| EMAs, so each allocation also records what the other
three signals would have scored on the same gradients (`last_scores_all`); only the chosen one masks.

A masked triplet has E_i = 0, so ∂L/∂A_i = ∂L/∂B_i = 0, but ∂L/∂E_i ≠ 0: E_i moves again after the
next optimizer step and the triplet can be *revived* by a later allocation (the callback counts them).
"""

from __future__ import annotations

import torch
from peft.tuners.adalora.layer import RankAllocator

from peftlab.errors import PeftlabError

SIGNALS = ("baseline_adalora", "importance_only", "plasticity_only", "combo")


def module_of(param_name: str) -> str:
    """HF module name of a `...<module>.lora_E.default` (or adapter-less `...lora_E`) key."""
    for part in (".lora_E", ".lora_A", ".lora_B"):
        if part in param_name:
            return param_name.split(part, 1)[0]
    return param_name


def triplet_scores(element_scores: dict[str, torch.Tensor], adapter: str) -> dict[str, torch.Tensor]:
    """{lora_E parameter name: T [r]} from element-wise scores of every lora_A [r, in], lora_E [r, 1], lora_B [out, r].

    T_i = s(E)_i + mean_j s(A)_{i,j} + mean_j s(B)_{j,i} — PEFT's aggregation in `mask_to_budget`.
    """
    out = {}
    for name, score_e in element_scores.items():
        if f"lora_E.{adapter}" not in name:
            continue
        score_a = element_scores[name.replace("lora_E", "lora_A")]  # [r, in]
        score_b = element_scores[name.replace("lora_E", "lora_B")]  # [out, r]
        out[name] = score_e.view(-1) + score_a.mean(dim=1) + score_b.mean(dim=0)  # [r]
    return out


def zscore(x: torch.Tensor) -> torch.Tensor:
    """(x − mean) / std over all entries (population std); all zeros when std is 0."""
    std = x.std(unbiased=False)
    return torch.zeros_like(x) if float(std) == 0.0 else (x - x.mean()) / std


class RecordingRankAllocator(RankAllocator):
    """PEFT's allocator, unchanged, that also records the triplet scores of each allocation (`last_scores`) and,
    for comparison, every other signal's scores on the same gradients (`last_scores_all`, {signal: scores}).

    The comparison EMAs (|w·g| and |g|, decay `ema_decay`) are kept beside PEFT's own and never feed its mask.
    """

    signal = "baseline_adalora"

    def __init__(self, model, peft_config, adapter_name, ema_decay: float = 0.9, combo_lambda: float = 1.0):
        self.last_scores: dict[str, torch.Tensor] | None = None
        self.last_scores_all: dict[str, dict[str, torch.Tensor]] | None = None
        self.ema_decay, self.combo_lambda = float(ema_decay), float(combo_lambda)
        self.ema_importance: dict[str, torch.Tensor] = {}
        self.ema_plasticity: dict[str, torch.Tensor] = {}
        super().__init__(model, peft_config, adapter_name)

    def reset_ipt(self):
        super().reset_ipt()
        self.ema_importance, self.ema_plasticity = {}, {}

    def update_ipt(self, model):
        _require_gradients(model, self.adapter_name)
        super().update_ipt(model)  # PEFT's sensitivity × uncertainty EMAs
        self.update_signal_emas(model)

    def update_signal_emas(self, model) -> None:
        """EMA_d of |w·g| and of |g| for every lora_A/E/B element (g = the gradient of this step)."""
        d = self.ema_decay
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" not in name or self.adapter_name not in name:
                    continue
                grad = param.grad.detach()
                if name not in self.ema_importance:
                    self.ema_importance[name] = torch.zeros_like(param)
                    self.ema_plasticity[name] = torch.zeros_like(param)
                self.ema_importance[name].mul_(d).add_((param * grad).abs(), alpha=1 - d)
                self.ema_plasticity[name].mul_(d).add_(grad.abs(), alpha=1 - d)

    def scores_of(self, signal: str) -> dict[str, torch.Tensor]:
        """{lora_E name: T [r]} of `signal` from the current EMAs (every signal, whichever one allocates)."""
        if signal == "baseline_adalora":  # PEFT's triplet score: what its `mask_to_budget` thresholds
            return triplet_scores({n: self._element_score(n) for n in self.exp_avg_ipt}, self.adapter_name)
        importance = triplet_scores(self.ema_importance, self.adapter_name)
        plasticity = triplet_scores(self.ema_plasticity, self.adapter_name)
        if signal == "importance_only":
            return importance
        if signal == "plasticity_only":
            return plasticity
        names = list(importance)
        sizes = [importance[n].numel() for n in names]
        z_imp = zscore(torch.cat([importance[n] for n in names])).split(sizes)  # z over all triplets at once
        z_pla = zscore(torch.cat([plasticity[n] for n in names])).split(sizes)
        return {n: zi + self.combo_lambda * zp for n, zi, zp in zip(names, z_imp, z_pla)}

    def current_scores(self) -> dict[str, torch.Tensor]:
        return self.scores_of(self.signal)

    def _record_scores(self) -> dict[str, torch.Tensor]:
        self.last_scores_all = {s: {k: v.detach().clone() for k, v in self.scores_of(s).items()} for s in SIGNALS}
        self.last_scores = self.last_scores_all[self.signal]
        return self.last_scores

    def mask_to_budget(self, model, budget):
        self._record_scores()
        return super().mask_to_budget(model, budget)


class SignalRankAllocator(RecordingRankAllocator):
    """Importance-only, plasticity-only or combo scores; keeps exactly `budget` triplets."""

    def __init__(self, model, peft_config, adapter_name, signal: str, ema_decay: float, combo_lambda: float):
        if signal not in SIGNALS[1:]:
            raise PeftlabError(f"unknown signal '{signal}'; choose one of: {', '.join(SIGNALS)}")
        self.signal = signal
        super().__init__(model, peft_config, adapter_name, ema_decay, combo_lambda)

    def mask_to_budget(self, model, budget):
        """Keep the `budget` highest-scoring triplets over all modules, zero E of the rest; PEFT's rank_pattern."""
        scores = self._record_scores()
        names = list(scores)
        flat = torch.cat([scores[n] for n in names])  # [total triplets]
        order = torch.argsort(flat, descending=True, stable=True)
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[order[:budget]] = True
        rank_pattern = {}
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, kept in zip(names, keep.split([scores[n].numel() for n in names])):
                params[name].masked_fill_(~kept.view(-1, 1), 0.0)  # E [r, 1]
                rank_pattern[name] = kept.tolist()
        return rank_pattern


def _require_gradients(model, adapter: str) -> None:
    """One line instead of PEFT's `None * tensor` TypeError when allocation runs after `zero_grad`."""
    for name, param in model.named_parameters():
        if "lora_" in name and adapter in name and param.requires_grad and param.grad is None:
            raise PeftlabError(f"AdaLoRA allocation found no gradient on '{name}': update_and_allocate must run "
                               f"after optimizer.step() and before zero_grad() (TrainerCallback.on_optimizer_step)")


def make_allocator(model, peft_config, adapter: str, signal: str, ema_decay: float, combo_lambda: float):
    """The allocator for `signal`, built on the inner HF model as PEFT builds its own."""
    if signal == "baseline_adalora":
        return RecordingRankAllocator(model, peft_config, adapter, ema_decay, combo_lambda)
    return SignalRankAllocator(model, peft_config, adapter, signal, ema_decay, combo_lambda)

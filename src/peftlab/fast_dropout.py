"""Dropout on the CPU without `bernoulli_`: the same distribution from a cheaper random stream (issue 13).

On the CPU, `nn.Dropout` draws its mask with `bernoulli_`, one serial generator call per element: in
a MiniLM-L6 training step (batch 16 × 128 tokens) the model's own dropouts — hidden states after
the embeddings, each attention output and each FFN, and the attention probabilities — took ~18 % of
an FFT step single-threaded (`benchmarks/README.md`), and that serial part does not shrink with
more threads. Writing our own dropout is justified only because no library draws CPU masks faster.

- `drop_mask`: one 64-bit `random_` word feeds four 16-bit lanes (two 32-bit lanes when p is not
  representable to 0.1 % in 2⁻¹⁶ steps), so a bool mask costs a quarter of the generator calls of an
  int32 tensor and ~1/8 of `bernoulli_`'s time. P(drop) = p rounded to the lane grid (`effective_p`).
- `FastDropout`: `where(drop, 0, x) · 1/(1 − p)`; `drop()` returns the unscaled tensor so a
  caller (the LoRA branch) can fold the scale into a GEMM. On other devices (fused dropout kernels
  there) and in eval mode it is exactly `F.dropout`.
- `sdpa_fast_dropout`: transformers' sdpa attention, except on the CPU in training with dropout
  on, where SDPA falls back to its math path and draws a `bernoulli_` mask over every attention
  probability ([batch, heads, q, kv], the largest mask of the step). There it computes the same
  math path with a `drop_mask`. Everything else (eval, GPU, caches, biases, exotic kwargs) goes to
  transformers' own `sdpa_attention_forward` unchanged.
- `use_fast_dropout(model)`: swaps every `nn.Dropout` of a (base) model for `FastDropout` and its
  sdpa attention for `sdpa_fast_dropout`. Only the in-memory model changes: `save_pretrained` does
  not write the attention implementation, and a loaded checkpoint is plain HF again.

Same distribution, different random numbers: with `fast_dropout: false` in the config a run draws
exactly the masks plain HF Trainer would.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ATTENTION_NAME = "peftlab_sdpa_fast_dropout"

# `random_` costs about the same per element whatever the integer width, so one 64-bit draw is cut
# into lanes: four 16-bit lanes when p is representable to 0.1 % in steps of 2⁻¹⁶ (p = 0.1 → 0.1000061;
# half the generator calls of 32-bit lanes, measured 4.2 → 2.1 ms for an attention-probability mask of
# [16, 12, 128, 128]), else two 32-bit lanes (p = 0.001 would be 7 % off in 16-bit steps).
_LANE_DTYPES = (torch.int16, torch.int32)
_MAX_RELATIVE_P_ERROR = 1e-3


def _lane_grid(p: float) -> tuple[int, int]:
    """(lane width b, drop levels k): an element drops when its uniform b-bit lane is among the lowest k = round(p·2ᵇ).

    b = 16 when k / 2¹⁶ is within 0.1 % of p, else b = 32 (the one place the rounding rule lives).
    """
    levels = round(p * 2**16)
    if p > 0 and abs(levels / 2**16 - p) <= _MAX_RELATIVE_P_ERROR * p:
        return 16, levels
    return 32, round(p * 2**32)


def lane_bits(p: float) -> int:
    """Width of the uniform integer lane one mask element is drawn from: 16 if it represents p well, else 32."""
    return _lane_grid(p)[0]


def effective_p(p: float) -> float:
    """The drop probability `drop_mask` really uses: p rounded to the lane's 2⁻ᵇⁱᵗˢ grid."""
    bits, drop_levels = _lane_grid(p)
    return drop_levels / 2**bits


def drop_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """(bool DROP mask of `shape`, scale 1 / (1 − p_eff)), P(drop) = p_eff = `effective_p(p)`.

    Each element is dropped when its uniform b-bit lane (b = `lane_bits(p)`) is among the lowest
    round(p·2ᵇ) of the 2ᵇ values. Draws from the global generator of `device` (seeded by the Trainer
    like every other dropout).
    """
    bits, drop_levels = _lane_grid(p)  # signed lanes below -2**(bits-1) + drop_levels are dropped
    lane_dtype = _LANE_DTYPES[bits == 32]
    lanes_per_word = 64 // bits
    n = math.prod(shape)
    words = torch.empty(-(-n // lanes_per_word), dtype=torch.int64, device=device)
    words.random_(-(2**63), None)  # every one of the 2**64 bit patterns, equally likely
    lanes = words.view(lane_dtype)[:n].view(shape)  # [n_words * lanes_per_word] -> shape
    return lanes < drop_levels - 2 ** (bits - 1), 2**bits / (2**bits - drop_levels)


class FastDropout(nn.Module):
    """Inverted dropout, `x · keep / (1 − p)`, with masks from `drop_mask` on the CPU.

    Same distribution as `nn.Dropout(p)` (up to p rounded, `effective_p`), a different random stream. On
    other devices (fused dropout kernels there) and in eval mode it is exactly `F.dropout`.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dropped, scale = self.drop(x)
        return dropped if scale == 1.0 else dropped * scale

    def drop(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(x with the dropped entries zeroed, NOT yet scaled; the scale 1 / (1 − p)).

        The caller applies the scale where it is cheapest: the LoRA branch folds it into the
        rank-r GEMM's alpha, which saves a full pass over [tokens, d_in] forward and backward.
        `where` with the bool mask also avoids `x * mask`'s bool → float conversion copy
        (both seen in the issue-13 profile: `aten::copy_`/`aten::mul` on [16, 128, 384]).
        """
        if not self.training or self.p <= 0 or x.device.type != "cpu":
            return F.dropout(x, self.p, self.training), 1.0
        drop, scale = drop_mask(x.shape, self.p, x.device)
        # `where` writes the output in one pass; `masked_fill` clones x, then fills (two passes, fwd and bwd).
        return torch.where(drop, 0.0, x), scale  # autograd keeps the bool mask (1 byte/element) for backward

    def extra_repr(self) -> str:
        return f"p={self.p}"


# kwargs the math path below handles (they carry no attention semantics); anything else → transformers' sdpa
_HARMLESS_KWARGS = {"position_ids", "output_attentions", "use_cache", "cache_position", "token_type_ids"}


def _fast_path_applies(module, query, key, attention_mask, dropout, is_causal, kwargs) -> bool:
    if dropout <= 0 or query.device.type != "cpu" or query.dtype != torch.float32 or not torch.is_grad_enabled():
        return False
    given = {name for name, value in kwargs.items() if value is not None}  # e.g. encoder_hidden_states=None
    if not module.training or given - _HARMLESS_KWARGS or kwargs.get("output_attentions"):
        return False
    if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
        return False
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    # causal without a mask: only the training shape (q_len == kv_len), where sdpa's upper-left alignment is plain tril
    return not (causal and attention_mask is None and query.shape[2] > 1 and query.shape[2] != key.shape[2])


def attention_with_dropout(query, key, value, attention_mask, p: float, scaling: float | None, causal: bool):
    """softmax(q kᵀ · s + mask) with a `drop_mask` on the probabilities, @ v, · 1/(1 − p): SDPA's math path.

    query [B, H, q, d], key/value [B, H, kv, d] (kv heads already repeated); mask bool (True = attend) or
    additive float, broadcastable to [B, H, q, kv]. Returns [B, H, q, d].
    """
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query * scale, key.transpose(-1, -2))  # [B, H, q, kv]; s on q: fewer elements than kv
    lowest = torch.finfo(scores.dtype).min  # not -inf: a row with every key masked stays finite, as in eager
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        # bool → additive on the small [B, 1, q, kv] mask, then ONE in-place add on the scores (measured ~10 %
        # faster fwd + bwd than masked_fill on the [B, H, q, kv] scores; matmul's backward does not need them)
        attention_mask = torch.zeros(attention_mask.shape, dtype=scores.dtype, device=scores.device).masked_fill_(
            ~attention_mask, lowest)
    elif attention_mask is None and causal and query.shape[2] > 1:
        future = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool, device=query.device).triu(1)  # [q, kv]
        attention_mask = torch.zeros(future.shape, dtype=scores.dtype, device=scores.device).masked_fill_(future, lowest)
    if attention_mask is not None:
        scores.add_(attention_mask)
    probs = scores.softmax(dim=-1)
    drop, keep_scale = drop_mask(probs.shape, p, probs.device)
    out = torch.matmul(torch.where(drop, 0.0, probs), value)  # [B, H, q, d]; where: one pass (see FastDropout.drop)
    return out.mul_(keep_scale)  # the scale on [.., d] instead of [.., kv]: fewer elements when kv > d


def sdpa_fast_dropout(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      is_causal=None, **kwargs):
    """transformers' `sdpa_attention_forward`, with `drop_mask` dropout on the CPU in training (see module doc)."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if not _fast_path_applies(module, query, key, attention_mask, dropout, is_causal, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)  # [B, H_kv, kv, d] -> [B, H, kv, d]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    out = attention_with_dropout(query, key, value, attention_mask, dropout, scaling, bool(causal))
    return out.transpose(1, 2).contiguous(), None  # [B, H, q, d] -> [B, q, H, d], as sdpa_attention_forward


def _register_attention() -> None:
    """Register the attention function AND sdpa's mask builder under our name: transformers builds no
    attention mask at all for an implementation without a registered mask function (padding would leak)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, sdpa_fast_dropout)
    AttentionMaskInterface.register(ATTENTION_NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def use_fast_dropout(model: nn.Module) -> dict[str, int | str]:
    """Swap the model's `nn.Dropout` modules for `FastDropout` and its sdpa attention for `sdpa_fast_dropout`.

    Call it on the base model before a method wraps it (PEFT's own dropouts stay PEFT's). Returns what
    changed: {"dropouts": n swapped, "attention": implementation now in use}.
    """
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p))
                swapped += 1
    config = getattr(model, "config", None)
    attention = getattr(config, "_attn_implementation", None)
    if attention == "sdpa" and hasattr(model, "set_attn_implementation"):
        _register_attention()
        model.set_attn_implementation(ATTENTION_NAME)
        attention = model.config._attn_implementation
    return {"dropouts": swapped, "attention": attention}
